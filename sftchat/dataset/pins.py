"""Pinned prompts: "this must keep working". A pin is a prompt and the answer the user accepted
for it; every new adapter is replayed on the pins before it answers (the review, `sftchat
eval`), and one whose greedy answer differs is a regression to look at.

A pin keeps the conversation its prompt was asked in (system prompt and earlier turns): it is
replayed with them, as the answer was given.

Pins live in the workspace's store (the `pins` table, beside the examples) and are never
trained on: to teach an answer, save it as an example too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from sftchat.conversation import Turn
from sftchat.dataset.store import (
    ExampleStore, StoreError, context_column, row_with_turns, validate_fields,
)


class PinNotFound(StoreError):
    """No pin has the given id."""


@dataclass(frozen=True)
class Pin:
    id: int
    instruction: str
    input: str
    response: str          # the accepted answer
    adapter: str | None    # the adapter that gave it (None: the base model or typed in)
    created_at: float
    system: str = ""
    context: tuple[Turn, ...] = ()   # the earlier turns it was asked after

    def to_dict(self) -> dict:
        return asdict(self)


_COLUMNS = "id, instruction, input, response, adapter, created_at, system, context"


class Pins:
    """The pins of one store (`Pins(store)`), on the store's connection."""

    def __init__(self, store: ExampleStore) -> None:
        self._db = store.connection
        self._transaction = store.transaction

    def add(self, instruction: str, response: str, input: str = "",
            adapter: str | None = None, system: str = "", context=()) -> int:
        """Pin `instruction` (asked after `context`, under `system`) with its accepted
        `response`; pinning the same prompt in the same conversation again replaces the
        answer (one pin per prompt). Returns the pin's id."""
        validate_fields(instruction, response)
        context_json = context_column(context)
        with self._transaction():
            row = self._db.execute(
                "SELECT id FROM pins WHERE instruction=? AND input=? AND system=? AND context=?",
                (instruction, input or "", system or "", context_json)).fetchone()
            if row is not None:
                self._db.execute("UPDATE pins SET response=?, adapter=?, created_at=? "
                                 "WHERE id=?", (response, adapter, time.time(), row[0]))
                return row[0]
            return self._db.execute(
                "INSERT INTO pins (instruction, input, response, adapter, created_at, system, "
                "context) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (instruction, input or "", response, adapter, time.time(), system or "",
                 context_json)).lastrowid

    def remove(self, pin_id: int) -> None:
        with self._transaction():
            if self._db.execute("DELETE FROM pins WHERE id=?", (pin_id,)).rowcount == 0:
                raise PinNotFound(f"no pin with id {pin_id}; `sftchat pins list` shows them")

    def get(self, pin_id: int) -> Pin:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM pins WHERE id=?", (pin_id,)).fetchone()
        if row is None:
            raise PinNotFound(f"no pin with id {pin_id}; `sftchat pins list` shows them")
        return row_with_turns(Pin, row)

    def all(self) -> list[Pin]:
        return [row_with_turns(Pin, row) for row in self._db.execute(
            f"SELECT {_COLUMNS} FROM pins ORDER BY id")]

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM pins").fetchone()[0]
