"""The curated dataset: examples in SQLite (WAL mode) under `WORKSPACE/data/`.

Each example has an integer id, instruction, optional input, response, the model's original
answer when it came from a chat, a source ("cli", "chat", "import:FILE") and timestamps.
Beside the examples the store keeps *rejected answers* — model answers that were not chosen:
an edited answer's original, the losing answers of a comparison, an answer flagged as bad
(with no example), or given on the command line — which export as preference data (DPO, KTO);
and *pins* (`sftchat.dataset.pins`): prompts whose accepted answer must keep working.

Why SQLite: a committed transaction survives a kill -9 of the writer the next instant, and
WAL mode lets the chat app, the CLI and a training snapshot read and write concurrently.
`synchronous=FULL` keeps commits durable even across power loss; `busy_timeout` makes a
second writer wait for the lock instead of failing with "database is locked".

The schema version lives in `PRAGMA user_version`; `MIGRATIONS[n]` upgrades version n to
n + 1 inside one transaction. This module imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

from sftchat.conversation import InConversation, Turn, turns_from_json, turns_to_json
from sftchat.dataset.preferences import PREFERENCE_KINDS, preference_records
from sftchat.errors import SftchatError

DB_NAME = "examples.sqlite3"
BUSY_TIMEOUT_MS = 30_000

MIGRATIONS: list[str] = [
    # 0 -> 1: the examples table.
    """
    CREATE TABLE examples (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        instruction TEXT NOT NULL,
        input TEXT NOT NULL DEFAULT '',
        response TEXT NOT NULL,
        original_response TEXT,
        source TEXT NOT NULL DEFAULT 'cli',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX examples_created ON examples(created_at);
    """,
    # 1 -> 2: answers that were not chosen (preference data), and pinned prompts. An edited
    # chat answer's original was the first kind of rejected answer: it moves over.
    """
    CREATE TABLE rejected (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        example_id INTEGER,
        instruction TEXT NOT NULL,
        input TEXT NOT NULL DEFAULT '',
        response TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX rejected_example ON rejected(example_id);
    INSERT INTO rejected (example_id, instruction, input, response, source, created_at)
        SELECT id, instruction, input, original_response, 'edit', created_at FROM examples
        WHERE original_response IS NOT NULL AND original_response != response;
    CREATE TABLE pins (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        instruction TEXT NOT NULL,
        input TEXT NOT NULL DEFAULT '',
        response TEXT NOT NULL,
        adapter TEXT,
        created_at REAL NOT NULL
    );
    """,
    # 2 -> 3: conversations. An example, a rejected answer and a pin each answer the last
    # user message after an optional system prompt and earlier turns (`context`: JSON, see
    # `sftchat.conversation`); '' for both is the single-turn case every older row is.
    """
    ALTER TABLE examples ADD COLUMN system TEXT NOT NULL DEFAULT '';
    ALTER TABLE examples ADD COLUMN context TEXT NOT NULL DEFAULT '';
    ALTER TABLE rejected ADD COLUMN system TEXT NOT NULL DEFAULT '';
    ALTER TABLE rejected ADD COLUMN context TEXT NOT NULL DEFAULT '';
    ALTER TABLE pins ADD COLUMN system TEXT NOT NULL DEFAULT '';
    ALTER TABLE pins ADD COLUMN context TEXT NOT NULL DEFAULT '';
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(SftchatError):
    """A dataset operation failed in a way the user can fix (message says how)."""


class ExampleNotFound(StoreError):
    """No example has the given id."""


@dataclass(frozen=True)
class Rejected(InConversation):
    """A model answer that was not chosen; `example_id` is None for a bad answer that has no
    replacement (yet)."""

    id: int
    example_id: int | None
    instruction: str
    input: str
    response: str
    source: str          # "edit" | "compare" | "bad" | "cli"
    created_at: float
    system: str = ""
    context: tuple[Turn, ...] = ()   # the earlier turns the answer followed

    def to_dict(self) -> dict:
        return asdict(self)

    def to_record(self) -> dict:
        """The training view (`rejected.jsonl` of a run): the answer as `output`, with the
        example it was rejected for (None: a bad answer with no replacement)."""
        record = {"id": self.id, "example_id": self.example_id,
                  "instruction": self.instruction, "input": self.input,
                  "output": self.response, "source": self.source}
        if self.system:
            record["system"] = self.system
        if self.context:
            record["context"] = [turn.to_dict() for turn in self.context]
        return record


REJECTED_SOURCES = ("edit", "compare", "bad", "cli")


@dataclass(frozen=True)
class Example(InConversation):
    id: int
    instruction: str
    input: str
    response: str
    original_response: str | None
    source: str
    created_at: float
    updated_at: float
    system: str = ""
    context: tuple[Turn, ...] = ()   # earlier turns, oldest first (`sftchat.conversation`)

    def to_record(self) -> dict:
        """The training/export view: Alpaca field names plus provenance, and `system` and
        `context` only for a conversation (a single-turn record is what it always was)."""
        record = {"id": self.id, "instruction": self.instruction, "input": self.input,
                  "output": self.response}
        if self.system:
            record["system"] = self.system
        if self.context:
            record["context"] = [turn.to_dict() for turn in self.context]
        return record

    def to_dict(self) -> dict:
        return asdict(self)


_COLUMNS = ("id, instruction, input, response, original_response, source, "
            "created_at, updated_at, system, context")
_REJECTED_COLUMNS = "id, example_id, instruction, input, response, source, created_at, " \
    "system, context"


def row_with_turns(cls, row):
    """A dataclass from a row whose last column is the JSON of the earlier turns."""
    return cls(*row[:-1], turns_from_json(row[-1]))


def context_column(context) -> str:
    turns = [Turn.from_dict(turn) for turn in context]
    for turn in turns:
        validate_fields(turn.instruction, turn.response, what="an earlier turn's ")
    return turns_to_json(turns)


def validate_fields(instruction: str, response: str, what: str = "the ") -> None:
    if not instruction or not instruction.strip():
        raise StoreError(f"{what}instruction is empty; give the example an instruction")
    if not response or not response.strip():
        raise StoreError(f"{what}response is empty; give the example a response")


class ExampleStore:
    """Open (creating or migrating if needed) the store of a workspace's `data/` folder."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                       isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._retry_while_locked(lambda: self._db.execute("PRAGMA journal_mode=WAL"))
            self._db.execute("PRAGMA synchronous=FULL")
            self._retry_while_locked(self._migrate)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise StoreError(
                    f"the dataset {self.path} stayed locked by another process for over "
                    f"{BUSY_TIMEOUT_MS // 1000} s; close other sftchat processes and retry"
                ) from exc
            raise StoreError(
                f"cannot open the dataset {self.path}: {exc}; "
                "restore it from a backup or move it aside to start a new one"
            ) from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the dataset {self.path}: {exc}; "
                "restore it from a backup or move it aside to start a new one"
            ) from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ExampleStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ------------------------------------------------------------------ schema

    @staticmethod
    def _retry_while_locked(operation) -> None:
        """Run `operation`, retrying while another process holds the lock.

        Switching a new database to WAL needs an exclusive lock that SQLite's busy timeout
        does not wait for: processes creating the same store at once get "database is
        locked" straight away. They wait here instead, up to the busy timeout.
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        delay = 0.005
        while True:
            try:
                operation()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this sftchat "
                f"understands ({SCHEMA_VERSION}); upgrade sftchat"
            )
        while version < SCHEMA_VERSION:
            # BEGIN IMMEDIATE takes the write lock, so two processes never migrate at once;
            # the version is re-read under the lock.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version < SCHEMA_VERSION:
                    for statement in MIGRATIONS[version].split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    version += 1
                    self._db.execute(f"PRAGMA user_version={version}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @property
    def schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    # ------------------------------------------------------------------ writes

    def add(self, instruction: str, response: str, input: str = "",
            original_response: str | None = None, source: str = "cli",
            rejected: Iterable[tuple[str, str]] = (), system: str = "",
            context: Iterable[Turn] = ()) -> int:
        """Insert one example and return its id once the commit is durable. `rejected` are
        (answer, source) pairs of answers not chosen for it; an `original_response` that the
        user changed is one too (source "edit"). `system` and `context` (earlier turns) make
        it a conversation."""
        context = tuple(context)
        with self._transaction():
            example_id = self.add_many(
                [(instruction, input, response, original_response, source, system,
                  context)])[0]
            for answer, answer_source in rejected:
                if answer and answer.strip():
                    self._insert_rejected(example_id, instruction, input, answer,
                                          answer_source, system, context)
        return example_id

    def add_rejected(self, instruction: str, response: str, input: str = "",
                     source: str = "bad", example_id: int | None = None, system: str = "",
                     context: Iterable[Turn] = ()) -> int:
        """Keep a model answer that was not chosen (by default: flagged as a bad answer, with
        no replacement) with the conversation it answered; return its id."""
        validate_fields(instruction, response)
        with self._transaction():
            if example_id is not None:
                self.get(example_id)  # raises ExampleNotFound
            return self._insert_rejected(example_id, instruction, input, response, source,
                                         system, tuple(context))

    def _insert_rejected(self, example_id, instruction, input_text, response, source,
                         system: str = "", context: tuple = ()) -> int:
        if source not in REJECTED_SOURCES:
            raise StoreError(f"unknown source of a rejected answer {source!r}")
        return self._db.execute(
            "INSERT INTO rejected (example_id, instruction, input, response, source, "
            "created_at, system, context) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (example_id, instruction, input_text or "", response, source, time.time(),
             system or "", context_column(context)),
        ).lastrowid

    def add_many(self, rows: Iterable[tuple]) -> list[int]:
        """Insert (instruction, input, response, original_response, source[, system,
        context]) rows atomically: all of them or, on any invalid row, none."""
        now = time.time()
        ids = []
        with self._transaction():
            for row in rows:
                instruction, input_text, response, original, source = row[:5]
                system, context = (row[5], tuple(row[6])) if len(row) > 5 else ("", ())
                validate_fields(instruction, response)
                cursor = self._db.execute(
                    "INSERT INTO examples (instruction, input, response, original_response, "
                    "source, created_at, updated_at, system, context) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (instruction, input_text or "", response, original, source, now, now,
                     system or "", context_column(context)),
                )
                ids.append(cursor.lastrowid)
                if original is not None and original != response:
                    self._insert_rejected(cursor.lastrowid, instruction, input_text, original,
                                          "edit", system, context)
        return ids

    def update(self, example_id: int, instruction: str | None = None,
               response: str | None = None, input: str | None = None,
               system: str | None = None, context: Iterable[Turn] | None = None) -> Example:
        """Change the fields given (None: keep); `context=()` makes it single-turn."""
        with self._transaction():
            current = self.get(example_id)
            instruction = current.instruction if instruction is None else instruction
            response = current.response if response is None else response
            input_text = current.input if input is None else input
            system = current.system if system is None else system
            context = current.context if context is None else tuple(context)
            validate_fields(instruction, response)
            self._db.execute(
                "UPDATE examples SET instruction=?, input=?, response=?, system=?, context=?, "
                "updated_at=? WHERE id=?",
                (instruction, input_text, response, system,
                 context_column(context), time.time(), example_id),
            )
        return self.get(example_id)

    def delete(self, example_id: int) -> None:
        with self._transaction():
            cursor = self._db.execute("DELETE FROM examples WHERE id=?", (example_id,))
            if cursor.rowcount == 0:
                raise ExampleNotFound(self._not_found(example_id))
            self._db.execute("DELETE FROM rejected WHERE example_id=?", (example_id,))

    def _transaction(self, read_only: bool = False) -> "_Transaction":
        return _Transaction(self._db, read_only)

    def transaction(self, read_only: bool = False) -> "_Transaction":
        """One transaction on the store's database, for the tables that live beside the
        examples (`sftchat.dataset.pins`)."""
        return self._transaction(read_only)

    @property
    def connection(self) -> sqlite3.Connection:
        return self._db

    # ------------------------------------------------------------------ reads

    def _not_found(self, example_id: int) -> str:
        return f"no example with id {example_id}; `sftchat data list` shows the ids"

    def get(self, example_id: int) -> Example:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM examples WHERE id=?", (example_id,)
        ).fetchone()
        if row is None:
            raise ExampleNotFound(self._not_found(example_id))
        return row_with_turns(Example, row)

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM examples").fetchone()[0]

    def outside_changes(self) -> int:
        """A number that changes whenever another connection (another app, a CLI) commits.

        SQLite's `data_version` ignores this connection's own commits, and reading it costs
        no I/O, so a screen can poll it to notice examples added elsewhere.
        """
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    def iter_examples(self, search: str | None = None, limit: int | None = None,
                      offset: int = 0) -> Iterator[Example]:
        """Examples in id order; `search` matches the text of any turn or the system prompt."""
        sql = f"SELECT {_COLUMNS} FROM examples"
        params: list = []
        if search:
            fields = ("instruction", "input", "response", "system", "context")
            sql += " WHERE " + " OR ".join(f"instr(lower({name}), lower(?))" for name in fields)
            params += [search] * len(fields)
        sql += " ORDER BY id LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]
        for row in self._db.execute(sql, params):
            yield row_with_turns(Example, row)

    def rejected_for(self, example_id: int) -> list[Rejected]:
        return [row_with_turns(Rejected, row) for row in self._db.execute(
            f"SELECT {_REJECTED_COLUMNS} FROM rejected WHERE example_id=? ORDER BY id",
            (example_id,))]

    def iter_rejected(self) -> Iterator[Rejected]:
        """Every rejected answer, in id order (those of deleted examples are gone)."""
        for row in self._db.execute(f"SELECT {_REJECTED_COLUMNS} FROM rejected ORDER BY id"):
            yield row_with_turns(Rejected, row)

    def preference_records(self, kind: str) -> Iterator[dict]:
        """Preference data as TRL's trainers load it, read in one transaction: `dpo` or `kto`
        records, standard or conversational (`sftchat.dataset.preferences` says which)."""
        if kind not in PREFERENCE_KINDS:
            raise StoreError(f"unknown preference format {kind!r}; choose dpo or kto")
        with self._transaction(read_only=True):
            examples, rejected = list(self.iter_examples()), list(self.iter_rejected())
        return preference_records(kind, examples, rejected)

    def snapshot(self) -> list[Example]:
        """Every example, read in one transaction: a consistent view for a training run."""
        with self._transaction(read_only=True):
            return list(self.iter_examples())

    def training_snapshot(self) -> tuple[list[Example], list[Rejected]]:
        """Every example and every rejected answer, read in one transaction (a run that
        learns from rejected answers too)."""
        with self._transaction(read_only=True):
            return list(self.iter_examples()), list(self.iter_rejected())

    def stats(self) -> dict:
        """Counts and averages of the dataset. `conversations`: examples with a system prompt
        or earlier turns, of which `multi_turn` have earlier turns and `with_system` a system
        prompt."""
        row = self._db.execute(
            "SELECT COUNT(*), SUM(length(instruction)), SUM(length(input)), "
            "SUM(length(response)), SUM(original_response IS NOT NULL "
            "AND original_response != response), MIN(created_at), MAX(updated_at), "
            "SUM(input != ''), SUM(system != '' OR context != ''), SUM(context != ''), "
            "SUM(system != '') FROM examples"
        ).fetchone()
        count = row[0]
        sources = dict(self._db.execute(
            "SELECT source, COUNT(*) FROM examples GROUP BY source ORDER BY source"
        ).fetchall())
        return {
            "examples": count,
            "with_input": row[7] or 0,
            "conversations": row[8] or 0,
            "multi_turn": row[9] or 0,
            "with_system": row[10] or 0,
            "edited_from_chat": row[4] or 0,
            "avg_instruction_chars": round((row[1] or 0) / count, 1) if count else 0,
            "avg_response_chars": round((row[3] or 0) / count, 1) if count else 0,
            "sources": sources,
            "first_created": row[5],
            "last_updated": row[6],
            "rejected_answers": self._db.execute(
                "SELECT COUNT(*) FROM rejected").fetchone()[0],
            "pins": self._db.execute("SELECT COUNT(*) FROM pins").fetchone()[0],
            "schema_version": self.schema_version,
        }


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error). `read_only` uses a deferred BEGIN,
    which in WAL mode gives a consistent snapshot without blocking writers. Inside another
    transaction it is part of that one (the outer one commits or rolls back)."""

    def __init__(self, db: sqlite3.Connection, read_only: bool = False) -> None:
        self._db = db
        self._begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        self._outer = False

    def __enter__(self):
        self._outer = not self._db.in_transaction
        if self._outer:
            self._db.execute(self._begin)
        return self._db

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._outer:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")


def snapshot_hash(records: Iterable[dict]) -> str:
    """sha256 of the training records, in order: identifies exactly what an adapter saw."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()
