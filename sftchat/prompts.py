"""THE prompt template: the one place that turns examples and conversations into text and tokens.

Training and inference both call this module, so the prompt the model is trained on and the
prompt it is asked at inference are byte-identical (GUIDE §1):

- `render_prompt(template, instruction, input, history, system=...)` -> the prompt text,
  response empty.
- `render(template, example)` -> the full training text (prompt + response).
- `encode_prompt(tokenizer, ...)` -> prompt token ids, truncated to a budget if needed.
- `encode_example(tokenizer, template, example, max_length)` -> `(input_ids, labels)` where
  every prompt token is `IGNORE_INDEX` and only the learned answers (the last one, and earlier
  ones whose `Turn.learn` is set) and their end-of-turn tokens are learned.
- `supervision_view(...)` shows which tokens are learned, for debugging masks.

A conversation is tokenized in segments, never as one text: the first prompt, then each
answer, its end token, the text the template puts between that answer and the next one, and
so on. The chat builds its prompt for the next answer the same way, so that prompt is a
byte-identical prefix of the ids the conversation trains on, earlier turns and system prompt
included (joint tokenization could merge tokens across a boundary and break that). An earlier
answer is followed by the end token the model ended it with: the template's own text for it
(`<|im_end|>`) is replaced by the token, and Alpaca, whose text has none, gets the EOS there.
This needs a template that renders earlier turns the same way whatever follows them; one that
does not (it trims or rewrites earlier answers) is refused for multi-turn conversations.

Tokens are the template's alone: text a user typed, a dataset holds or a model answered that
spells an added token — special (`<|im_end|>`, `<|im_start|>system`) or not (`<tool_call>`) —
stays text, in the chat's prompts and in training, tokenized as it would be were it no token
(otherwise a message could close its turn and open another: a template injection).
`sftchat.plain_text` owns how (`encode_text`, re-exported here); text without such a spelling
is tokenized as ever. ChatML is refused for a tokenizer without its two tokens: its markers
would be text anyone can type, and nothing would end an answer as ChatML does.

The system prompt: ChatML and the tokenizer's template get it as their system message (when
it is empty, ChatML's default line and whatever default the tokenizer's template has);
Alpaca's rendering replaces its header paragraph with it.

Templates: "auto" (the default: the model tokenizer's own chat template when it has one,
as instruct models were trained on it, else Alpaca), "alpaca" (with Alpaca's `### Input:`
variant), "chatml", and "tokenizer" (the model tokenizer's own chat template). "auto" is a
setting, not a template: `resolve_template` turns it into one of the others once the
tokenizer is known, and that concrete name is what an adapter records.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from sftchat.conversation import Turn, example_context, to_messages
from sftchat.errors import SftchatError
from sftchat.plain_text import added_token_texts, as_text, encode_text, tokenize

# Re-exported: prompts took (and take) turns before the store had them; `encode_text` is how
# the rest of sftchat counts an answer's tokens.
__all__ = ["Turn", "encode_text"]

IGNORE_INDEX = -100
AUTO_TEMPLATE = "auto"
ALPACA = "alpaca"
TEMPLATES = (ALPACA, "chatml", "tokenizer")      # what a prompt is rendered with
TEMPLATE_SETTINGS = (AUTO_TEMPLATE, *TEMPLATES)  # what a user may choose

ALPACA_HEADER = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
)
ALPACA_HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
)
CHATML_SYSTEM = "You are a helpful assistant."
TRUNCATION_MARKER = "\n…\n"


class TemplateError(SftchatError, ValueError):
    """A template name is unknown, or cannot be used with this tokenizer (a user's choice:
    the message says which template to use instead)."""


class ExampleTooLongError(SftchatError, ValueError):
    """The response (plus its end token) alone does not fit in `max_length`."""


@dataclass
class PromptEncoding:
    """Prompt token ids plus what truncation did to fit them in the budget."""

    ids: list[int]
    dropped_turns: int = 0
    truncated_tokens: int = 0
    # The earlier turns that stayed in the prompt, and where each one's answer and end token
    # lie in `ids` (start, end): what training learns when the turn is marked.
    kept_turns: list[Turn] = field(default_factory=list)
    answer_spans: list[tuple[int, int]] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return self.dropped_turns > 0 or self.truncated_tokens > 0

    def notice(self) -> str | None:
        """A one-line, user-facing description of what was cut, or None."""
        parts = []
        if self.dropped_turns:
            parts.append(f"dropped the {self.dropped_turns} oldest turn(s) of the conversation")
        if self.truncated_tokens:
            parts.append(f"cut {self.truncated_tokens} tokens from the middle of the prompt")
        if not parts:
            return None
        return "Prompt too long for the model's context: " + " and ".join(parts) + "."


@dataclass
class EncodedExample:
    """A tokenized training example: labels are `IGNORE_INDEX` on every prompt token."""

    input_ids: list[int]
    labels: list[int]
    prompt: PromptEncoding = field(default_factory=lambda: PromptEncoding([]))

    @property
    def num_learned(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise TemplateError(
            f"unknown template {name!r}; choose one of: {', '.join(TEMPLATES)}"
        )
    return name


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


def resolve_template(setting: str, tokenizer: Any) -> str:
    """The concrete template for a template setting: "auto" becomes "tokenizer" when the
    tokenizer has a chat template, else "alpaca"; any other name is checked (for this
    tokenizer: ChatML needs its tokens) and returned. Engine and trainer call it at model
    load, so a template the model cannot take is refused before a chat or a run starts."""
    if setting == AUTO_TEMPLATE:
        return "tokenizer" if has_chat_template(tokenizer) else ALPACA
    name = check_template(setting)
    if name == "tokenizer" and not has_chat_template(tokenizer):
        raise _no_chat_template(tokenizer)
    if name == "chatml":
        missing = _missing_chatml_tokens(tokenizer)
        if missing:
            raise TemplateError(
                "template 'chatml' needs the tokens <|im_start|> and <|im_end|>, and this "
                f"model's tokenizer lacks {' and '.join(missing)} (a base model, not trained "
                "on ChatML), so its markers would be plain text and no end token would teach "
                "the model to stop; use --template alpaca or auto (template = \"alpaca\" or "
                "\"auto\" in sftchat.toml)")
    return name


def _missing_chatml_tokens(tokenizer: Any) -> list[str]:
    texts = added_token_texts(tokenizer) if tokenizer is not None else frozenset()
    return [token for token in CHATML_TOKENS if token not in texts]


def _no_chat_template(tokenizer: Any) -> TemplateError:
    # ChatML is only worth suggesting to a tokenizer that has its tokens.
    others = "alpaca" if _missing_chatml_tokens(tokenizer) else "alpaca or chatml"
    return TemplateError("template 'tokenizer' needs a tokenizer with a chat template; "
                         f"this model has none, use --template {others}")


# --------------------------------------------------------------------------- rendering


def _alpaca_block(instruction: str, input_text: str) -> str:
    block = f"### Instruction:\n{instruction}\n\n"
    if input_text:
        block += f"### Input:\n{input_text}\n\n"
    return block + "### Response:\n"


def _alpaca_header(system: str, first_input: str) -> str:
    if system:
        return system + "\n\n"
    return ALPACA_HEADER_WITH_INPUT if first_input else ALPACA_HEADER


def render_prompt(
    template: str,
    instruction: str,
    input: str = "",
    history: Sequence[Turn] = (),
    tokenizer: Any = None,
    system: str = "",
) -> str:
    """The prompt text for `instruction`, after `history`, with the response left empty.

    Alpaca has no multi-turn form of its own: earlier turns are repeated as
    Instruction/Response blocks under one header, each response ended by a blank line. The
    header is the system prompt when there is one, else Alpaca's own, in its `### Input:`
    wording when the conversation's first message has an input (a later turn cannot change
    the header: what came before an answer must not depend on what follows it).
    """
    check_template(template)
    if template == "alpaca":
        text = _alpaca_header(system, history[0].input if history else input)
        for turn in history:
            text += _alpaca_block(turn.instruction, turn.input) + turn.response + "\n\n"
        return text + _alpaca_block(instruction, input)
    messages = to_messages(system, history, instruction, input)
    if template == "chatml":
        text = "" if system else f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n"
        for message in messages:
            text += f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n"
        return text + "<|im_start|>assistant\n"
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise _no_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render(template: str, example: Any, tokenizer: Any = None) -> str:
    """The full training text of an example (prompt + response), without the end token."""
    return render_prompt(
        template, example_field(example, "instruction"), example_field(example, "input"),
        history=example_context(example), tokenizer=tokenizer,
        system=example_field(example, "system"),
    ) + example_field(example, "response")


def example_field(example: Any, name: str) -> str:
    """Read a field from a dict or an object; `response` also accepts Alpaca's `output`."""
    if isinstance(example, dict):
        value = example.get(name)
        if value is None and name == "response":
            value = example.get("output")
    else:
        value = getattr(example, name, None)
    return value or ""


def stop_strings(template: str) -> tuple[str, ...]:
    """Text that, once generated, means the model has started a new turn: cut it and stop."""
    if template == "alpaca":
        return ("### Instruction:", "### Response:", "### Input:")
    if template == "chatml":
        return ("<|im_end|>", "<|im_start|>")
    return ()


def chat_template_jinja(template: str, tokenizer: Any) -> str:
    """A Jinja chat template (what Hugging Face folders and GGUF files carry) that renders
    the prompts of `template` as sftchat builds them, for exported models: the tokenizer's
    own for "tokenizer"; ChatML with its default system line; Alpaca under its header (the
    system prompt replaces it), each earlier answer ended by the EOS as in training. Both
    start with the BOS when the tokenizer puts one first, as sftchat's prompts do."""
    if template == "tokenizer":
        return tokenizer.chat_template
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = "{{ bos_token }}" if tokenizer.bos_token_id is not None and ids[:1] == [
        tokenizer.bos_token_id] else ""
    if template == "chatml":
        return bos + (
            "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
            + CHATML_SYSTEM + "<|im_end|>\\n' }}{% endif %}"
            "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
            "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    check_template(template)
    header = ALPACA_HEADER.replace("\n", "\\n")
    return bos + (
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
        "{% else %}{{ '" + header + "' }}{% endif %}"
        "{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ message['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}")


# --------------------------------------------------------------------------- tokens


@functools.lru_cache(maxsize=8)
def _chat_template_end_token(tokenizer: Any) -> int | None:
    """The special token the tokenizer's chat template puts right after an assistant message
    (`<|im_end|>` for ChatML models, `<|eot_id|>` for Llama 3, `</s>` for Mistral), found by
    rendering a message and reading what follows it. None if no special token does."""
    sentinel = "\x00sftchat-end\x00"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}],
            tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this has no answer
        return None
    if sentinel not in text:
        return None
    after = text.split(sentinel, 1)[1]
    ids = tokenize(tokenizer, after, special=False) if after else []
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    special |= {token_id for token_id, token in
                (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                if getattr(token, "special", False)}
    if ids and ids[0] in special:
        return ids[0]
    return None


def end_token_id(template: str, tokenizer: Any) -> int:
    """The token that ends a response: ChatML's `<|im_end|>` when the vocabulary has it; for
    the tokenizer's chat template, the token that template ends an answer with; else EOS."""
    if template == "chatml":
        token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            return token_id
    if template == "tokenizer":
        token_id = _chat_template_end_token(tokenizer)
        if token_id is not None:
            return token_id
    if tokenizer.eos_token_id is None:
        raise TemplateError("the tokenizer has no EOS token, so a response cannot be ended")
    return tokenizer.eos_token_id


def stop_token_ids(template: str, tokenizer: Any) -> list[int]:
    """Every token id that ends generation: the template's end token and the EOS."""
    ids = {end_token_id(template, tokenizer)}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _turns_as_text(tokenizer: Any, history: Sequence[Turn]) -> list[Turn]:
    return [Turn(as_text(tokenizer, turn.instruction), as_text(tokenizer, turn.response),
                 as_text(tokenizer, turn.input), turn.learn) for turn in history]


def _end_token_text(tokenizer: Any, token_id: int) -> str:
    """How a template writes the end token in its text ("<|im_end|>"), or "" if it cannot."""
    token = tokenizer.convert_ids_to_tokens(token_id)
    return token if isinstance(token, str) else ""


def _encode_turns(tokenizer: Any, template: str, instruction: str, input_text: str,
                  history: Sequence[Turn], system: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The prompt ids of a conversation, tokenized in segments (see the module docstring),
    and the (start, end) of each earlier answer with its end token."""
    history = _turns_as_text(tokenizer, history)
    instruction, input_text = as_text(tokenizer, instruction), as_text(tokenizer, input_text)
    system = as_text(tokenizer, system)
    texts = [render_prompt(template, turn.instruction, turn.input, history[:k], tokenizer,
                           system) for k, turn in enumerate(history)]
    texts.append(render_prompt(template, instruction, input_text, history, tokenizer, system))
    # The "tokenizer" template's text already carries the BOS when the template adds one.
    ids = tokenize(tokenizer, texts[0], special=template != "tokenizer")
    spans: list[tuple[int, int]] = []
    if not history:
        return ids, spans
    end_id = end_token_id(template, tokenizer)
    end_text = _end_token_text(tokenizer, end_id)
    for k, turn in enumerate(history):
        answer, following = turn.response, texts[k + 1]
        if not following.startswith(texts[k] + answer):
            # Templates that trim messages (Llama 3's) render " Paris. " as "Paris.".
            answer = answer.strip()
            if not following.startswith(texts[k] + answer):
                raise TemplateError(
                    f"the {template} template renders an earlier answer differently once "
                    "the conversation goes on, so a multi-turn prompt cannot be a prefix of "
                    "its training text; use --template chatml or alpaca for conversations")
        start = len(ids)
        ids += tokenize(tokenizer, answer, special=False) + [end_id]
        spans.append((start, len(ids)))
        between = following[len(texts[k] + answer):]
        if end_text and between.startswith(end_text):
            between = between[len(end_text):]
        ids += tokenize(tokenizer, between, special=False)
    return ids, spans


def encode_prompt(
    tokenizer: Any,
    template: str,
    instruction: str,
    input: str = "",
    history: Sequence[Turn] = (),
    max_tokens: int | None = None,
    system: str = "",
) -> PromptEncoding:
    """Prompt token ids; if longer than `max_tokens`, fit them without ever failing.

    First the oldest turns of `history` are dropped; if the prompt still does not fit, tokens
    are cut from its middle, keeping the start (template header, start of the instruction)
    and the end (end of the instruction and the response marker the model continues from).
    """
    history = list(history)
    dropped = 0
    while True:
        ids, spans = _encode_turns(tokenizer, template, instruction, input, history, system)
        if max_tokens is None or len(ids) <= max_tokens or not history:
            break
        history.pop(0)
        dropped += 1
    encoding = PromptEncoding(ids, dropped_turns=dropped, kept_turns=history,
                              answer_spans=spans)
    if max_tokens is not None and len(ids) > max_tokens:
        marker = tokenize(tokenizer, TRUNCATION_MARKER, special=False)
        if max_tokens < len(marker) + 8:
            raise ExampleTooLongError(
                f"no room for the prompt: {max_tokens} tokens left for it; "
                "raise the maximum length"
            )
        keep = max_tokens - len(marker)
        head = keep // 4
        tail = keep - head
        encoding.truncated_tokens = len(ids) - keep
        encoding.ids = ids[:head] + marker + ids[len(ids) - tail:]
    return encoding


# A prompt never gets fewer tokens than this when an example is fitted into max_length.
MIN_PROMPT_TOKENS = 32


def encode_example(
    tokenizer: Any, template: str, example: Any, max_length: int | None = None
) -> EncodedExample:
    """Tokenize a training example into `input_ids` and masked `labels`.

    `labels` is `IGNORE_INDEX` for every prompt token; the response tokens and the end token
    are learned, and so is every earlier answer (with its end token) whose turn is marked
    `learn`. When the whole does not fit in `max_length`, the prompt side is truncated
    (see `encode_prompt`); the response and its end token are never cut: if they alone leave
    no room for a prompt, `ExampleTooLongError` says so.
    """
    response_ids = encode_text(tokenizer, example_field(example, "response"))
    response_ids.append(end_token_id(template, tokenizer))
    budget = None
    if max_length is not None:
        budget = max_length - len(response_ids)
        if budget < MIN_PROMPT_TOKENS:
            raise ExampleTooLongError(
                f"the response is {len(response_ids)} tokens, which leaves no room for the "
                f"prompt within max length {max_length}; raise --max-length or shorten it"
            )
    prompt = encode_prompt(
        tokenizer, template, example_field(example, "instruction"),
        example_field(example, "input"), history=example_context(example), max_tokens=budget,
        system=example_field(example, "system"),
    )
    labels = [IGNORE_INDEX] * len(prompt.ids)
    for turn, (start, end) in zip(prompt.kept_turns, prompt.answer_spans):
        if turn.learn:
            labels[start:end] = prompt.ids[start:end]
    return EncodedExample(
        input_ids=prompt.ids + response_ids,
        labels=labels + response_ids,
        prompt=prompt,
    )


def supervision_view(tokenizer: Any, input_ids: Iterable[int], labels: Iterable[int]) -> str:
    """The decoded sequence with learned spans in ⟦brackets⟧: shows what is trained at a glance.

    Runs of tokens with the same status are decoded together, so a character split over
    several byte tokens still reads correctly.
    """
    out: list[str] = []
    run: list[int] = []
    run_learned = False
    for token_id, label in [*zip(input_ids, labels), (None, None)]:
        learned = label is not None and label != IGNORE_INDEX
        if run and (token_id is None or learned != run_learned):
            text = tokenizer.decode(run)
            out.append(f"⟦{text}⟧" if run_learned else text)
            run = []
        if token_id is not None:
            run.append(token_id)
            run_learned = learned
    return "".join(out)
