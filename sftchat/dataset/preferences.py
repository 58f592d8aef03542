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
