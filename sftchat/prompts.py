"""THE prompt template: the one place that turns examples and conversations into text and tokens.

Training and inference both call this module, so the prompt the model is trained on and the
prompt it is asked at inference are byte-identical (GUIDE §1):

- `render_prompt(template, instruction, input, history)` -> the prompt text, response empty.
- `render(template, example)` -> the full training text (prompt + response).
- `encode_prompt(tokenizer, ...)` -> prompt token ids, truncated to a budget if needed.
- `encode_example(tokenizer, template, example, max_length)` -> `(input_ids, labels)` where
  every prompt token is `IGNORE_INDEX` and only the response tokens and the end-of-turn token
  are learned.
- `supervision_view(...)` shows which tokens are learned, for debugging masks.

Prompt and response are tokenized separately and concatenated, so the inference prompt's
token ids are always an exact prefix of the training ids (joint tokenization could merge
tokens across the boundary and break that).

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


class TemplateError(ValueError):
    """A template name is unknown, or cannot be used with this tokenizer."""


class ExampleTooLongError(ValueError):
    """The response (plus its end token) alone does not fit in `max_length`."""


@dataclass(frozen=True)
class Turn:
    """One finished exchange of a conversation: what the user asked and what was answered."""

    instruction: str
    response: str
    input: str = ""


@dataclass
class PromptEncoding:
    """Prompt token ids plus what truncation did to fit them in the budget."""

    ids: list[int]
    dropped_turns: int = 0
    truncated_tokens: int = 0

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


def resolve_template(setting: str, tokenizer: Any) -> str:
    """The concrete template for a template setting: "auto" becomes "tokenizer" when the
    tokenizer has a chat template, else "alpaca"; any other name is checked and returned."""
    if setting == AUTO_TEMPLATE:
        return "tokenizer" if has_chat_template(tokenizer) else ALPACA
    return check_template(setting)


# --------------------------------------------------------------------------- rendering


def _alpaca_block(instruction: str, input_text: str) -> str:
    block = f"### Instruction:\n{instruction}\n\n"
    if input_text:
        block += f"### Input:\n{input_text}\n\n"
    return block + "### Response:\n"


def _messages(instruction: str, input_text: str, history: Sequence[Turn]) -> list[dict]:
    def user_content(turn_instruction: str, turn_input: str) -> str:
        return f"{turn_instruction}\n\n{turn_input}" if turn_input else turn_instruction

    messages: list[dict] = []
    for turn in history:
        messages.append({"role": "user", "content": user_content(turn.instruction, turn.input)})
        messages.append({"role": "assistant", "content": turn.response})
    messages.append({"role": "user", "content": user_content(instruction, input_text)})
    return messages


def render_prompt(
    template: str,
    instruction: str,
    input: str = "",
    history: Sequence[Turn] = (),
    tokenizer: Any = None,
) -> str:
    """The prompt text for `instruction`, after `history`, with the response left empty.

    Alpaca has no multi-turn form of its own: earlier turns are repeated as
    Instruction/Response blocks under one header, each response ended by a blank line.
    """
    check_template(template)
    if template == "alpaca":
        has_input = bool(input) or any(turn.input for turn in history)
        text = ALPACA_HEADER_WITH_INPUT if has_input else ALPACA_HEADER
        for turn in history:
            text += _alpaca_block(turn.instruction, turn.input) + turn.response + "\n\n"
        return text + _alpaca_block(instruction, input)
    if template == "chatml":
        text = f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n"
        for message in _messages(instruction, input, history):
            text += f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n"
        return text + "<|im_start|>assistant\n"
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            "template 'tokenizer' needs a tokenizer with a chat template; "
            "this model has none, use --template alpaca or chatml"
        )
    return tokenizer.apply_chat_template(
        _messages(instruction, input, history), tokenize=False, add_generation_prompt=True
    )


def render(template: str, example: Any, tokenizer: Any = None) -> str:
    """The full training text of an example (prompt + response), without the end token."""
    return render_prompt(
        template, example_field(example, "instruction"), example_field(example, "input"),
        tokenizer=tokenizer,
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
    ids = _tokenize(tokenizer, after, special=False) if after else []
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


def _tokenize(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_prompt(
    tokenizer: Any,
    template: str,
    instruction: str,
    input: str = "",
    history: Sequence[Turn] = (),
    max_tokens: int | None = None,
) -> PromptEncoding:
    """Prompt token ids; if longer than `max_tokens`, fit them without ever failing.

    First the oldest turns of `history` are dropped; if the prompt still does not fit, tokens
    are cut from its middle, keeping the start (template header, start of the instruction)
    and the end (end of the instruction and the response marker the model continues from).
    """
    history = list(history)
    dropped = 0
    while True:
        text = render_prompt(template, instruction, input, history, tokenizer)
        # The "tokenizer" template's text already carries the BOS when the template adds one.
        ids = _tokenize(tokenizer, text, special=template != "tokenizer")
        if max_tokens is None or len(ids) <= max_tokens or not history:
            break
        history.pop(0)
        dropped += 1
    encoding = PromptEncoding(ids, dropped_turns=dropped)
    if max_tokens is not None and len(ids) > max_tokens:
        marker = _tokenize(tokenizer, TRUNCATION_MARKER, special=False)
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
    are learned. When the whole does not fit in `max_length`, the prompt side is truncated
    (see `encode_prompt`); the response and its end token are never cut: if they alone leave
    no room for a prompt, `ExampleTooLongError` says so.
    """
    response_ids = _tokenize(tokenizer, example_field(example, "response"), special=False)
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
        example_field(example, "input"), max_tokens=budget,
    )
    return EncodedExample(
        input_ids=prompt.ids + response_ids,
        labels=[IGNORE_INDEX] * len(prompt.ids) + response_ids,
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
