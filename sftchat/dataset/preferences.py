"""Preference data from the store's rejected answers, as TRL's DPO and KTO trainers load it.

- `dpo`: {prompt, chosen, rejected} for every rejected answer of an example (the example's
  answer is chosen), in example then answer order;
- `kto`: {prompt, completion, label}: every example labelled true, then every rejected
  answer (one with no example too: a bad answer not replaced yet) labelled false.

The prompt is the conversation the answer was given in. While no record of a file is a
conversation, every record is in TRL's *standard* format: the prompt is the user's text
(the instruction, and a non-empty input after a blank line), answers are strings — what
single-turn datasets always exported. Once any record is a conversation (a system prompt or
earlier turns), the whole file is in TRL's *conversational* format, since a column must hold
one type for `datasets` to load it: the prompt is the list of {role, content} messages up to
the answer — the system message, every earlier turn, the last user message — and
`chosen`/`rejected`/`completion` are [{"role": "assistant", "content": ANSWER}].

Nothing heavy is imported here.
"""

from __future__ import annotations

import re
from typing import Iterator, Sequence

from sftchat.conversation import Turn, to_messages

PREFERENCE_KINDS = ("dpo", "kto")


def preference_records(kind: str, examples: Sequence, rejected: Sequence) -> Iterator[dict]:
    """The `kind` records (one of `PREFERENCE_KINDS`) of `examples` (`store.Example`) and
    their `rejected` answers (`store.Rejected`), read in one transaction by
    `ExampleStore.preference_records`, which checks `kind`."""
    if kind == "dpo":
        by_id = {example.id: example for example in examples}
        pairs = sorted(((by_id[answer.example_id], answer) for answer in rejected
                        if answer.example_id in by_id), key=lambda p: (p[0].id, p[1].id))
        chat = any(example.is_conversation for example, _ in pairs)
        for example, answer in pairs:
            yield {"prompt": _prompt(example, chat),
                   "chosen": _answer(example.response, chat),
                   "rejected": _answer(answer.response, chat)}
        return
    chat = any(item.is_conversation for item in (*examples, *rejected))
    for items, label in ((examples, True), (rejected, False)):
        for item in items:
            yield {"prompt": _prompt(item, chat), "completion": _answer(item.response, chat),
                   "label": label}


def _prompt(item, chat: bool):
    if chat:
        return to_messages(item.system, item.context, item.instruction, item.input)
    return Turn(item.instruction, "", item.input).user_text


def _answer(text: str, chat: bool):
    return [{"role": "assistant", "content": text}] if chat else text


# --------------------------------------------------------------------------- giving an answer

# A sentence ends at . ! ? or … followed by whitespace (or the text's end), or at a line break.
_SENTENCE_END = re.compile(r"[.!?…](?=\s|$)|\n")


def first_sentence(text: str) -> str:
    """`text` up to the end of its first sentence (its end mark included; leading space
    skipped): what a reader takes an answer to be saying."""
    text = text.lstrip()
    match = _SENTENCE_END.search(text)
    if match is None:
        return text
    end = match.end() if match.group() != "\n" else match.start()
    return text[:end] if text[:end].strip() else text


def telltale(rejected: str, chosen: str | None = None) -> str:
    """The beginning of a `rejected` answer that gives it away: its first sentence, and, when
    it has a `chosen` replacement that starts the same way (an edit that changed only the
    end), on to the first character where the two differ (and, when that is a space, the
    next one that is not: callers strip the end). An answer that begins with the telltale
    gives the rejected answer; one that leaves it earlier does not."""
    rejected = rejected.lstrip()
    prefix = first_sentence(rejected)
    if chosen is not None:
        chosen = chosen.lstrip()
        common = 0
        for a, b in zip(rejected, chosen):
            if a != b:
                break
            common += 1
        end = min(common + 1, len(rejected))
        while end < len(rejected) and rejected[end - 1].isspace():
            end += 1   # stripped, a differing space would leave only what both share
        prefix = rejected[:max(len(prefix), end)]
    return prefix


def gives(answer: str, rejected: str, chosen: str | None = None) -> bool:
    """Whether a model's `answer` gives the `rejected` one (see `telltale`). A rejected answer
    that is the whole start of its chosen one (the model stopped too soon) is given only by
    an answer that stops there too."""
    answer, rejected_text = answer.strip(), rejected.strip()
    if chosen is not None and chosen.strip().startswith(rejected_text):
        return answer == rejected_text
    return answer.startswith(telltale(rejected_text, chosen).strip())
