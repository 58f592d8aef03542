"""Import and export of instruction datasets: files of Alpaca, ShareGPT or messages records.

A format names the record schema (`schemas`: alpaca, sharegpt, messages). The file's encoding
is chosen independently, the same way for every schema: JSONL (one object per line) for a
`.jsonl`/`.ndjson` file, one JSON list for `.json`, and otherwise, on import, whatever the
content is. Both encodings are what `datasets.load_dataset("json", data_files=...)` reads.
`auto` (import only) takes the schema from the first record's keys. The older format name
`jsonl` still means "Alpaca records, JSONL encoding", whatever the extension.

Chat records may be whole conversations (a system prompt, earlier turns, which earlier
answers are learned): `schemas` says how they map to examples and back. Exporting a
conversation as Alpaca is refused unless `flatten` is asked for (`--flatten`).

Reading is all-or-nothing: every record is checked before the first one is stored, and an
error is one line naming the file, the record (or line), the problem and the fix. Writing is
atomic: a temporary file in the same folder, fsynced, then renamed over the target.

`read_conversation` reads one OpenAI messages list, ending with the user message to answer
(`sftchat ask --messages FILE`), with the same checks and wording as an import.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sftchat.dataset.schemas import (
    SCHEMAS,
    Conversation,
    FormatError,
    detect_schema,
    parse_messages,
    parse_record,
    render_record,
    unknown_schema,
)

__all__ = ["EXPORT_FORMATS", "FORMATS", "PREFERENCE_FORMATS", "SCHEMAS", "FormatError",
           "Imported", "describe_export", "detect_encoding", "export_format_for", "import_file",
           "read_conversation", "read_records", "write_records"]

FORMATS = ("auto", *SCHEMAS, "jsonl")
# Preference data (export only), from the store's rejected answers: the records TRL's DPO and
# KTO trainers load as they are (`ExampleStore.preference_records`).
PREFERENCE_FORMATS = ("dpo", "kto")
EXPORT_FORMATS = (*SCHEMAS, "jsonl", *PREFERENCE_FORMATS)
_JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class Imported:
    """What an import file holds, checked: its records and how many are conversations."""

    records: list[dict]          # {instruction, input, response[, system][, context]}
    schema: str
    encoding: str                # "json" (one list) or "jsonl"
    system_messages: int = 0     # records whose system message became their system prompt
    multi_turn: int = 0          # records with earlier turns (`context`)


def detect_encoding(path: Path, text: str) -> str:
    """"jsonl" or "json": by extension first, so a one-line JSONL file is not read as JSON."""
    suffix = Path(path).suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".json":
        return "json"
    return "json" if text.lstrip().startswith("[") else "jsonl"


def _parse_records(path: Path, text: str, encoding: str) -> list[tuple[int, object]]:
    """(position, raw record) pairs; position is the line (jsonl) or index (json), 1-based."""
    if encoding == "jsonl":
        records = []
        # Split on \n only: splitlines() would also split at U+2028/U+2029/U+0085, which
        # JSON allows unescaped inside strings.
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise FormatError(
                    f"{path}: line {number} is not valid JSON ({exc.msg}); "
                    "each line of a JSONL file must be one JSON object"
                ) from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); "
            "the file may be truncated — a .json dataset is one JSON list of records"
        ) from None
    if isinstance(data, dict):
        if detect_schema(data) is not None:
            # One record on its own (a hand-written {"messages": [...]} file): checking for
            # this first keeps its list of messages from being taken for a wrapped list.
            data = [data]
        else:
            # Some exports wrap the list: {"data": [...]} or {"train": [...]}.
            lists = [value for value in data.values() if isinstance(value, list)]
            if len(lists) != 1:
                raise FormatError(f"{path}: expected a JSON list of records, got an object")
            data = lists[0]
    if not isinstance(data, list):
        raise FormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return list(enumerate(data, start=1))


def import_file(path: Path, fmt: str = "auto") -> Imported:
    """Read and check every record of `path`; `fmt` is a schema, `auto` or `jsonl`."""
    path = Path(path)
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    text = read_text(path)
    encoding = "jsonl" if fmt == "jsonl" else detect_encoding(path, text)
    where = "line" if encoding == "jsonl" else "record"
    raw_records = _parse_records(path, text, encoding)
    if not raw_records:
        raise FormatError(f"{path}: no records found")
    schema, detected = ("alpaca" if fmt == "jsonl" else fmt), fmt == "auto"
    if detected:
        position, first = raw_records[0]
        if not isinstance(first, dict):
            raise FormatError(f"{path}: {where} {position} is not a JSON object")
        schema = detect_schema(first)
        if schema is None:
            raise unknown_schema(f"{path}: {where} {position}", first)
    imported = Imported([], schema, encoding)
    for position, raw in raw_records:
        record = parse_record(f"{path}: {where} {position}", raw, schema, detected)
        imported.records.append(record)
        imported.system_messages += "system" in record
        imported.multi_turn += "context" in record
    return imported


def read_records(path: Path, fmt: str = "auto") -> list[dict]:
    """Read and validate every record: a list of {instruction, input, response[, system][,
    context]} dicts."""
    return import_file(path, fmt).records


def read_conversation(where: str, text: str) -> Conversation:
    """The conversation of an OpenAI messages file's text — a list of {role, content}, or
    {"messages": [...]} — whose last message is the user's, to be answered. `where` names
    the file in errors."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"{where}: not valid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); "
            'expected OpenAI messages: [{"role": "user", "content": "..."}, ...]') from None
    if isinstance(data, dict) and "messages" in data:
        return parse_messages(where, data["messages"], answered=False)
    if not isinstance(data, list):
        raise FormatError(f'{where}: expected a JSON list of messages or {{"messages": '
                          f"[...]}}, got {type(data).__name__}")
    return parse_messages(where, data, answered=False)


def read_text(path: Path) -> str:
    """A UTF-8 file's text (a BOM dropped), or a FormatError saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text; convert it to UTF-8 first") from None
    except OSError as exc:
        raise FormatError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def export_format_for(path: Path, fmt: str | None) -> str:
    """The format to export in: the one asked for, else alpaca (JSONL for a .jsonl file)."""
    if fmt:
        return fmt
    return "jsonl" if Path(path).suffix.lower() in _JSONL_SUFFIXES else "alpaca"


def _export_plan(path: Path, fmt: str) -> tuple[str, str]:
    """(schema, encoding) of an export: `jsonl` forces JSONL, else the extension decides."""
    if fmt not in EXPORT_FORMATS:
        raise FormatError(f"unknown export format {fmt!r}; choose one of: "
                          f"{', '.join(EXPORT_FORMATS)}")
    if fmt == "jsonl":
        return "alpaca", "jsonl"
    return fmt, ("jsonl" if Path(path).suffix.lower() in _JSONL_SUFFIXES else "json")


def describe_export(path: Path, fmt: str) -> str:
    """For messages: e.g. "sharegpt, JSONL" or "alpaca, JSON list"."""
    schema, encoding = _export_plan(path, fmt)
    return f"{schema}, {'JSONL' if encoding == 'jsonl' else 'JSON list'}"


def write_json_lines(out, items: Iterable, as_list: bool) -> int:
    """Stream `items` to `out` as JSON Lines, or as one JSON list one item a line, without
    building the whole in memory (50,000 examples stay instant); return their count."""
    count = 0
    if as_list:
        out.write("[")
    for item in items:
        line = json.dumps(item, ensure_ascii=False)
        if as_list:
            out.write(("," if count else "") + "\n  " + line)
        else:
            out.write(line + "\n")
        count += 1
    if as_list:
        out.write("\n]\n")
    return count


def write_records(path: Path, records: Iterable[dict], fmt: str, flatten: bool = False) -> int:
    """Write the store's records (`Example.to_record`; for a preference format: its
    preference records, as they are) atomically; return their count. `flatten`: write
    conversations as Alpaca records (see `schemas`) instead of refusing them."""
    schema, encoding = _export_plan(path, fmt)
    if flatten and schema != "alpaca":
        raise FormatError(f"--flatten only applies to Alpaca exports (--format alpaca); "
                          f"{schema} records hold whole conversations")
    if schema not in PREFERENCE_FORMATS:
        records = (render_record(record, schema, flatten) for record in records)
    path = Path(path)
    if path.is_dir():
        raise FormatError(f"{path}: is a folder; give the path of the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            count = write_json_lines(out, records, as_list=encoding == "json")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _cannot_write(path, exc) from None
        raise
    return count


def _cannot_write(path: Path, exc: OSError) -> FormatError:
    # A read-only folder or a full disk is the user's to fix, not a bug: one line, no trace.
    return FormatError(f"{path}: cannot write it ({exc.strerror or exc}); "
                       "fix that or choose another path")


def read_prompts(path: str | None) -> list[str]:
    """The prompts of `sftchat eval --prompts FILE`: a JSONL file, each line a JSON string or
    an object with "prompt" (or "instruction"); [] without a file."""
    if path is None:
        return []
    prompts = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise FormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise FormatError(f"{path}, line {number}: not JSON; give one prompt per line "
                              'as a JSON string or {"prompt": ...}') from None
        text = item if isinstance(item, str) else \
            (item.get("prompt") or item.get("instruction") if isinstance(item, dict) else None)
        if not isinstance(text, str) or not text.strip():
            raise FormatError(f'{path}, line {number}: no prompt; give a JSON string or '
                              '{"prompt": ...}')
        prompts.append(text)
    return prompts
