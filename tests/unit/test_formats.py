"""Import/export formats: Alpaca JSON and JSONL, read and written through real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftchat.dataset.formats import (
    FormatError,
    detect_encoding,
    export_format_for,
    read_records,
    write_records,
)

ALPACA_RECORDS = [
    {"instruction": "Name a colour", "input": "", "output": "Blue"},
    {"instruction": "Translate to French", "input": "Hello", "output": "Bonjour"},
    {"instruction": "Multi-line", "input": "", "output": "line one\nline two\n  indented"},
]


def _as_read(records: list[dict]) -> list[dict]:
    """What read_records returns for Alpaca records: `output` becomes `response`."""
    return [{"instruction": r["instruction"], "input": r["input"], "response": r["output"]}
            for r in records]


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt, name", [("alpaca", "out.json"), ("jsonl", "out.jsonl")])
def test_write_then_read_round_trips(tmp_path, fmt, name):
    path = tmp_path / name
    assert write_records(path, ALPACA_RECORDS, fmt) == len(ALPACA_RECORDS)
    assert read_records(path) == _as_read(ALPACA_RECORDS)
    assert read_records(path, fmt) == _as_read(ALPACA_RECORDS)


def test_alpaca_export_is_a_plain_json_list_with_alpaca_keys(tmp_path):
    path = tmp_path / "export.json"
    # Extra keys (like the store's id) are not exported.
    write_records(path, [{**r, "id": n} for n, r in enumerate(ALPACA_RECORDS)], "alpaca")
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data == ALPACA_RECORDS
    for record in data:
        assert set(record) == {"instruction", "input", "output"}


def test_jsonl_export_is_one_json_object_per_line_with_alpaca_keys(tmp_path):
    path = tmp_path / "export.jsonl"
    write_records(path, ALPACA_RECORDS, "jsonl")
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == len(ALPACA_RECORDS)
    assert [json.loads(line) for line in lines] == ALPACA_RECORDS
    for line in lines:
        assert set(json.loads(line)) == {"instruction", "input", "output"}


@pytest.mark.parametrize("fmt, name", [("alpaca", "empty.json"), ("jsonl", "empty.jsonl")])
def test_exporting_nothing_writes_a_valid_empty_file(tmp_path, fmt, name):
    path = tmp_path / name
    assert write_records(path, [], fmt) == 0
    text = path.read_text(encoding="utf-8")
    if fmt == "alpaca":
        assert json.loads(text) == []
    else:
        assert text.strip() == ""


UNICODE_RECORDS = [
    {"instruction": "naïve café — déjà vu", "input": "日本語", "output": "emoji 🤖 👩‍💻"},
    {"instruction": "עברית", "input": "", "output": "quotes ' \" backslash \\ tab \t"},
    {"instruction": "windows\r\nnewlines", "input": "", "output": "text\nwith\nlines"},
]


@pytest.mark.parametrize("fmt, name", [("alpaca", "u.json"), ("jsonl", "u.jsonl")])
def test_unicode_round_trips_and_is_written_unescaped(tmp_path, fmt, name):
    path = tmp_path / name
    write_records(path, UNICODE_RECORDS, fmt)
    assert read_records(path) == _as_read(UNICODE_RECORDS)
    assert "日本語" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
@pytest.mark.parametrize("fmt, name", [("alpaca", "s.json"), ("jsonl", "s.jsonl")])
def test_unicode_line_separators_inside_strings_round_trip(tmp_path, fmt, name, separator):
    # json.dumps(ensure_ascii=False) writes U+2028/U+2029/U+0085 raw; they are legal inside a
    # JSON string, so a JSONL line containing one is still one record.
    records = [{"instruction": f"before{separator}after", "input": "",
                "output": f"x{separator}y"},
               {"instruction": "second", "input": "", "output": "record"}]
    path = tmp_path / name
    write_records(path, records, fmt)
    assert read_records(path) == _as_read(records)


def test_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.json"
    write_records(path, ALPACA_RECORDS, "alpaca")
    write_records(path, ALPACA_RECORDS[:1], "alpaca")
    assert json.loads(path.read_text(encoding="utf-8")) == ALPACA_RECORDS[:1]
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "out.jsonl"
    write_records(path, ALPACA_RECORDS, "jsonl")
    before = path.read_bytes()

    def broken():
        yield ALPACA_RECORDS[0]
        raise RuntimeError("source failed half-way")

    with pytest.raises(RuntimeError):
        write_records(path, broken(), "jsonl")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_write_creates_missing_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    write_records(path, ALPACA_RECORDS, "alpaca")
    assert json.loads(path.read_text(encoding="utf-8")) == ALPACA_RECORDS


def test_write_unknown_format_raises(tmp_path):
    # sharegpt is a format now; the error lists it among the choices.
    with pytest.raises(FormatError, match="sharegpt"):
        write_records(tmp_path / "x.json", ALPACA_RECORDS, "csv")
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------- reading variants


def test_response_is_a_synonym_of_output_in_alpaca_and_jsonl(tmp_path):
    records = [{"instruction": "Q1", "response": "A1"},
               {"instruction": "Q2", "input": "ctx", "response": "A2"}]
    expected = [{"instruction": "Q1", "input": "", "response": "A1"},
                {"instruction": "Q2", "input": "ctx", "response": "A2"}]
    alpaca = _write_text(tmp_path / "r.json", json.dumps(records))
    jsonl = _write_text(tmp_path / "r.jsonl", "\n".join(json.dumps(r) for r in records))
    assert read_records(alpaca) == expected
    assert read_records(jsonl) == expected


def test_missing_or_null_input_reads_as_empty_string(tmp_path):
    path = _write_text(tmp_path / "i.json", json.dumps([
        {"instruction": "a", "output": "b"},
        {"instruction": "c", "input": None, "output": "d"},
    ]))
    assert [r["input"] for r in read_records(path)] == ["", ""]


def test_alpaca_list_wrapped_in_an_object_is_accepted(tmp_path):
    path = _write_text(tmp_path / "w.json", json.dumps({"train": ALPACA_RECORDS}))
    assert read_records(path) == _as_read(ALPACA_RECORDS)


def test_jsonl_blank_lines_and_bom_are_tolerated(tmp_path):
    lines = [json.dumps(r) for r in ALPACA_RECORDS]
    path = tmp_path / "b.jsonl"
    path.write_bytes(("\ufeff" + lines[0] + "\n\n" + lines[1] + "\n   \n" + lines[2] + "\n")
                     .encode("utf-8"))
    assert read_records(path) == _as_read(ALPACA_RECORDS)


# --------------------------------------------------------------------------- detection


def test_detect_encoding_by_extension_then_content():
    # The encoding is detected apart from the schema (which was once named with it).
    assert detect_encoding(Path("x.jsonl"), "[") == "jsonl"
    assert detect_encoding(Path("x.NDJSON"), "[") == "jsonl"
    assert detect_encoding(Path("x.json"), "{}") == "json"
    assert detect_encoding(Path("x.JSON"), "{}") == "json"
    assert detect_encoding(Path("x.txt"), "  \n [ {} ]") == "json"
    assert detect_encoding(Path("x.txt"), '{"instruction": "a"}\n') == "jsonl"
    assert detect_encoding(Path("noext"), "[]") == "json"


def test_auto_detection_reads_by_content_without_a_known_extension(tmp_path):
    as_list = _write_text(tmp_path / "data.txt", json.dumps(ALPACA_RECORDS, indent=2))
    as_lines = _write_text(tmp_path / "data.dat",
                           "\n".join(json.dumps(r) for r in ALPACA_RECORDS) + "\n")
    assert read_records(as_list) == _as_read(ALPACA_RECORDS)
    assert read_records(as_lines) == _as_read(ALPACA_RECORDS)


def test_auto_detection_uses_the_extension_first(tmp_path):
    # A one-record JSONL file whose single line is an object; .jsonl means JSONL.
    path = _write_text(tmp_path / "one.jsonl", json.dumps(ALPACA_RECORDS[0]) + "\n")
    assert read_records(path) == _as_read(ALPACA_RECORDS[:1])


def test_explicit_format_overrides_the_extension(tmp_path):
    path = _write_text(tmp_path / "lines.json",
                       "\n".join(json.dumps(r) for r in ALPACA_RECORDS))
    assert read_records(path, "jsonl") == _as_read(ALPACA_RECORDS)
    with pytest.raises(FormatError):
        read_records(path)  # auto: .json means one JSON list, which this is not


def test_export_format_for():
    assert export_format_for(Path("x.jsonl"), None) == "jsonl"
    assert export_format_for(Path("x.ndjson"), None) == "jsonl"
    assert export_format_for(Path("x.json"), None) == "alpaca"
    assert export_format_for(Path("x.txt"), None) == "alpaca"
    assert export_format_for(Path("x.json"), "jsonl") == "jsonl"


# --------------------------------------------------------------------------- errors


def test_truncated_alpaca_json_is_a_format_error_naming_the_file(tmp_path):
    full = json.dumps(ALPACA_RECORDS, indent=2)
    path = _write_text(tmp_path / "cut.json", full[: len(full) // 2])
    with pytest.raises(FormatError) as info:
        read_records(path)
    message = str(info.value)
    assert str(path) in message
    assert "not valid JSON" in message and "line" in message


def test_malformed_jsonl_line_names_the_line_number(tmp_path):
    lines = [json.dumps(ALPACA_RECORDS[0]), "", '{"instruction": "broken", "output": ',
             json.dumps(ALPACA_RECORDS[1])]
    path = _write_text(tmp_path / "bad.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(FormatError) as info:
        read_records(path)
    message = str(info.value)
    assert "line 3" in message      # blank line 2 still counts as a line
    assert str(path) in message


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = _write_text(tmp_path / "arr.jsonl",
                       json.dumps(ALPACA_RECORDS[0]) + "\n[1, 2]\n")
    with pytest.raises(FormatError, match="line 2 is not a JSON object"):
        read_records(path)


@pytest.mark.parametrize("record, missing", [
    ({"instruction": "only an instruction"}, "output"),
    ({"output": "only an output"}, "instruction"),
    ({"prompt": "x", "completion": "y"}, "instruction"),
])
def test_record_missing_fields(tmp_path, record, missing):
    path = _write_text(tmp_path / "m.json", json.dumps([ALPACA_RECORDS[0], record]))
    with pytest.raises(FormatError) as info:
        read_records(path)
    message = str(info.value)
    assert "record 2" in message
    assert missing in message


@pytest.mark.parametrize("record, field", [
    ({"instruction": 5, "output": "x"}, "instruction"),
    ({"instruction": ["a"], "output": "x"}, "instruction"),
    ({"instruction": "a", "output": 3.5}, "output"),
    ({"instruction": "a", "output": {"text": "x"}}, "output"),
    ({"instruction": "a", "response": True}, "output"),
    ({"instruction": "a", "input": 5, "output": "x"}, "input"),
    ({"instruction": "a", "input": ["ctx"], "output": "x"}, "input"),
    ({"instruction": "a", "input": [], "output": "x"}, "input"),
    ({"instruction": "a", "input": 0, "output": "x"}, "input"),
])
def test_non_string_fields_are_rejected(tmp_path, record, field):
    path = _write_text(tmp_path / "t.jsonl", json.dumps(record) + "\n")
    with pytest.raises(FormatError) as info:
        read_records(path)
    message = str(info.value)
    assert "line 1" in message
    assert f"'{field}' must be a string" in message


@pytest.mark.parametrize("record", [
    {"instruction": "", "output": "x"},
    {"instruction": "   \n", "output": "x"},
    {"instruction": "a", "output": ""},
    {"instruction": "a", "response": " \t"},
])
def test_empty_instruction_or_output_is_rejected(tmp_path, record):
    path = _write_text(tmp_path / "e.json", json.dumps([ALPACA_RECORDS[0], record]))
    with pytest.raises(FormatError, match="record 2 has an empty instruction or output"):
        read_records(path)


def test_non_utf8_file_is_a_format_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"instruction": "café", "output": "crème"}]'.encode("latin-1"))
    with pytest.raises(FormatError, match="UTF-8"):
        read_records(path)


def test_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        read_records(tmp_path / "nope.json")
    with pytest.raises(FormatError, match="no such file"):
        read_records(tmp_path)  # a folder is not a file either


@pytest.mark.parametrize("name, text", [
    ("empty.json", "[]"),
    ("empty.jsonl", ""),
    ("blank.jsonl", "\n\n  \n"),
])
def test_no_records_is_a_format_error(tmp_path, name, text):
    path = _write_text(tmp_path / name, text)
    with pytest.raises(FormatError, match="no records"):
        read_records(path)


@pytest.mark.parametrize("text", ['"just a string"', "42", '{"a": 1, "b": 2}',
                                  '{"x": [], "y": []}'])
def test_alpaca_file_that_is_not_a_list_of_records(tmp_path, text):
    path = _write_text(tmp_path / "notlist.json", text)
    with pytest.raises(FormatError, match="expected a JSON list"):
        read_records(path)


def test_alpaca_list_item_that_is_not_an_object(tmp_path):
    path = _write_text(tmp_path / "items.json", json.dumps([ALPACA_RECORDS[0], "text"]))
    with pytest.raises(FormatError, match="record 2 is not a JSON object"):
        read_records(path)


def test_unknown_read_format(tmp_path):
    path = _write_text(tmp_path / "x.json", json.dumps(ALPACA_RECORDS))
    with pytest.raises(FormatError, match="unknown format"):
        read_records(path, "csv")


def test_format_error_is_a_value_error():
    assert issubclass(FormatError, ValueError)
