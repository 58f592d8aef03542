"""The shape of a conversation, shared by the store, the prompt template, the formats and the
chat: an optional system prompt, earlier turns, and the last user message with its answer.

An example is a conversation whose last assistant answer is always learned; an earlier answer
is learned only when its turn says so (`Turn.learn`: the curate screen marks it, an imported
dataset marks every answer). The single-turn example — instruction, optional input, response,
no system prompt, no earlier turns — is its one-line case, stored and exported as before.

Earlier turns are kept as JSON in the store (`turns_to_json` / `turns_from_json`): a list of
`{"instruction", "response"}` objects, plus `"input"` and `"learn": true` only when set, so a
stored conversation reads the same in a database browser as in `train.jsonl`. Nothing heavy is
imported here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class Turn:
    """One finished exchange: what the user asked (`instruction`, with Alpaca's optional
    `input`), what was answered, and whether training learns that answer."""

    instruction: str
    response: str
    input: str = ""
    learn: bool = False

    @property
    def user_text(self) -> str:
        """The user's message as a chat template shows it: the input folded in, if any."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"instruction": self.instruction, "response": self.response}
        if self.input:
            out["input"] = self.input
        if self.learn:
            out["learn"] = True
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "Turn":
        if isinstance(data, Turn):
            return data
        return cls(instruction=str(data.get("instruction", "")),
                   response=str(data.get("response", "")),
                   input=str(data.get("input") or ""), learn=bool(data.get("learn", False)))


def turns_to_json(turns: Iterable[Turn]) -> str:
    """The store's column value: "" for no earlier turns (every single-turn example)."""
    turns = [Turn.from_dict(turn).to_dict() for turn in turns]
    return json.dumps(turns, ensure_ascii=False) if turns else ""


def turns_from_json(text: str | None) -> tuple[Turn, ...]:
    if not text:
        return ()
    return tuple(Turn.from_dict(item) for item in json.loads(text))


def example_context(example: Any) -> tuple[Turn, ...]:
    """The earlier turns of an example given as an object or as a record (dict)."""
    value = (example.get("context") if isinstance(example, dict)
             else getattr(example, "context", None))
    if not value:
        return ()
    if isinstance(value, str):
        return turns_from_json(value)
    return tuple(Turn.from_dict(turn) for turn in value)


def to_messages(system: str, context: Sequence[Turn], instruction: str, input: str = "",
                response: str | None = None) -> list[dict]:
    """OpenAI messages of a conversation: the system prompt (if any), the earlier turns, the
    last user message and, when given, its answer."""
    messages: list[dict] = [{"role": "system", "content": system}] if system else []
    for turn in context:
        messages.append({"role": "user", "content": turn.user_text})
        messages.append({"role": "assistant", "content": turn.response})
    messages.append({"role": "user", "content": Turn(instruction, "", input).user_text})
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


class InConversation:
    """For the stored things that answer a conversation (an example, a rejected answer):
    whether theirs is more than the single-turn case. Needs `system` and `context`."""

    system: str
    context: tuple[Turn, ...]

    @property
    def is_conversation(self) -> bool:
        return bool(self.system or self.context)


def conversation_marks(item: InConversation, system_mark: str = "system") -> list[str]:
    """How lists mark a conversation: [] for the single-turn case, else e.g. ["3 turns",
    "system"] (the last turn counted)."""
    return ([f"{len(item.context) + 1} turns"] if item.context else []) + \
        ([system_mark] if item.system else [])
