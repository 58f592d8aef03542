"""Import and export of instruction datasets: Alpaca JSON (a list of records) and JSONL.

Both use Alpaca's field names — `instruction`, `input`, `output` — which is what
`datasets.load_dataset("json", data_files=...)` and most fine-tuning tools expect. On import,
`response` is accepted as a synonym of `output`. Reading is all-or-nothing: every record is
checked before the first one is stored, and an error names the file, the record and the fix.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

FORMATS = ("auto", "alpaca", "jsonl")
EXPORT_FORMATS = ("alpaca", "jsonl")


class FormatError(ValueError):
    """The file cannot be read as an instruction dataset (the message says where and why)."""


def detect_format(path: Path, text: str) -> str:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return "jsonl"
    if path.suffix.lower() == ".json":
        return "alpaca"
    return "alpaca" if text.lstrip().startswith("[") else "jsonl"


def _parse_records(path: Path, text: str, fmt: str) -> list[tuple[int, object]]:
    """(position, raw record) pairs; position is the line (jsonl) or index (alpaca), 1-based."""
    if fmt == "jsonl":
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
            "the file may be truncated — an Alpaca file is one JSON list of records"
        ) from None
    if isinstance(data, dict):
        # Some exports wrap the list: {"data": [...]} or {"train": [...]}.
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise FormatError(f"{path}: expected a JSON list of records, got an object")
        data = lists[0]
    if not isinstance(data, list):
        raise FormatError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return list(enumerate(data, start=1))


def read_records(path: Path, fmt: str = "auto") -> list[dict]:
    """Read and validate every record: a list of {instruction, input, response} dicts."""
    path = Path(path)
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not UTF-8 text; convert it to UTF-8 first") from None
    if fmt == "auto":
        fmt = detect_format(path, text)
    where = "line" if fmt == "jsonl" else "record"
    records = []
    for position, raw in _parse_records(path, text, fmt):
        if not isinstance(raw, dict):
            raise FormatError(f"{path}: {where} {position} is not a JSON object")
        response = raw.get("output", raw.get("response"))
        instruction = raw.get("instruction")
        if instruction is None or response is None:
            raise FormatError(
                f"{path}: {where} {position} has no 'instruction' and 'output' fields "
                f"(it has: {', '.join(sorted(raw)) or 'nothing'}); "
                "expected Alpaca records {instruction, input, output}"
            )
        input_text = raw.get("input")
        if input_text is None:
            input_text = ""
        for name, value in (("instruction", instruction), ("output", response),
                            ("input", input_text)):
            if not isinstance(value, str):
                raise FormatError(f"{path}: {where} {position}: '{name}' must be a string")
        if not instruction.strip() or not response.strip():
            raise FormatError(
                f"{path}: {where} {position} has an empty instruction or output; "
                "fix or remove that record"
            )
        records.append({"instruction": instruction, "input": input_text, "response": response})
    if not records:
        raise FormatError(f"{path}: no records found")
    return records


def write_records(path: Path, records: Iterable[dict], fmt: str) -> int:
    """Write Alpaca records atomically (temporary file, then rename); return their count."""
    if fmt not in EXPORT_FORMATS:
        raise FormatError(f"unknown export format {fmt!r}; choose one of: "
                          f"{', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if fmt == "alpaca":
                out.write("[")
            for record in records:
                line = json.dumps(
                    {"instruction": record["instruction"], "input": record["input"],
                     "output": record["output"]}, ensure_ascii=False)
                if fmt == "alpaca":
                    out.write(("," if count else "") + "\n  " + line)
                else:
                    out.write(line + "\n")
                count += 1
            if fmt == "alpaca":
                out.write("\n]\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def export_format_for(path: Path, fmt: str | None) -> str:
    if fmt:
        return fmt
    return "jsonl" if Path(path).suffix.lower() in (".jsonl", ".ndjson") else "alpaca"
