"""`sftchat data ...` run as a real subprocess (`python -m sftchat.cli`) on a temporary workspace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_pty
from cli_helpers import assert_one_line_error, clean_env, cli_command, ok, sftchat

from sftchat.dataset.store import ExampleStore

FULL_FIELDS = {"id", "instruction", "input", "response", "original_response", "source",
               "created_at", "updated_at", "system", "context"}










def add(workspace: Path, instruction: str, response: str, *extra: str) -> int:
    result = ok(sftchat(workspace, "data", "add", "--instruction", instruction,
                        "--response", response, *extra, in_process=True))
    return int(result.stdout.strip())


def list_json(workspace: Path, *extra: str) -> list[dict]:
    return json.loads(ok(sftchat(workspace, "data", "list", "--json", *extra, in_process=True)).stdout)


def store_rows(workspace: Path) -> list[tuple]:
    with ExampleStore(workspace / "data") as store:
        return [(e.id, e.instruction, e.input, e.response) for e in store.iter_examples()]


@pytest.fixture
def filled(ws) -> tuple[Path, list[int]]:
    ids = [add(ws, "Name a colour", "Blue"),
           add(ws, "Translate to French", "Bonjour", "--input", "Hello"),
           add(ws, "Capital of France?", "Paris")]
    return ws, ids


# --------------------------------------------------------------------------- add


def test_module_entry_point_runs(ws):
    result = ok(sftchat(None, "--version"))
    assert result.stdout.strip().startswith("sftchat ")
    result = ok(sftchat(ws, "data", "list"))
    assert result.stdout == ""


def test_add_prints_the_new_integer_id_on_stdout(ws):
    result = ok(sftchat(ws, "data", "add", "--instruction", "Say hi", "--response", "Hi!"))
    assert result.stdout.strip().isdigit()
    first = int(result.stdout)
    second = add(ws, "Say bye", "Bye!", "--input", "politely")
    assert second > first
    assert store_rows(ws) == [(first, "Say hi", "", "Hi!"),
                              (second, "Say bye", "politely", "Bye!")]


def test_add_dash_reads_the_text_from_stdin(ws):
    result = ok(sftchat(ws, "data", "add", "--instruction", "Write a haiku",
                        "--response", "-", stdin="line one\nline two\nline three\n"))
    example_id = int(result.stdout)
    shown = json.loads(ok(sftchat(ws, "data", "show", str(example_id), "--json")).stdout)
    assert shown["instruction"] == "Write a haiku"
    assert shown["response"] == "line one\nline two\nline three"

    result = ok(sftchat(ws, "data", "add", "--instruction", "-", "--response", "ok",
                        stdin="multi\nline instruction\n"))
    assert store_rows(ws)[-1] == (int(result.stdout), "multi\nline instruction", "", "ok")


def test_add_unicode_round_trips(ws):
    text = "naïve 日本語 🤖 \"quoted\""
    example_id = add(ws, text, text + "!")
    shown = json.loads(ok(sftchat(ws, "data", "show", str(example_id), "--json", in_process=True)).stdout)
    assert shown["instruction"] == text
    assert shown["response"] == text + "!"


@pytest.mark.parametrize("instruction, response", [("", "x"), ("   ", "x"), ("x", "")])
def test_add_empty_field_is_a_one_line_error_and_stores_nothing(ws, instruction, response):
    add(ws, "existing", "row")
    result = sftchat(ws, "data", "add", "--instruction", instruction, "--response", response, in_process=True)
    assert_one_line_error(result, "empty")
    assert result.stdout == ""
    assert len(store_rows(ws)) == 1


# --------------------------------------------------------------------------- list / show


def test_list_human_shows_ids_instructions_and_responses(filled):
    ws, ids = filled
    lines = ok(sftchat(ws, "data", "list", in_process=True)).stdout.splitlines()
    assert len(lines) == 3
    for line, example_id, instruction, response in zip(
            lines, ids, ["Name a colour", "Translate to French", "Capital of France?"],
            ["Blue", "Bonjour", "Paris"]):
        assert line.split()[0] == str(example_id)
        assert instruction in line and response in line


def test_list_human_keeps_each_example_on_one_line(ws):
    add(ws, "first line\nsecond line", "answer\nwith\nlines")
    lines = ok(sftchat(ws, "data", "list", in_process=True)).stdout.splitlines()
    assert len(lines) == 1
    assert "first line second line" in lines[0]


def test_list_json_is_valid_json_with_full_fields(filled):
    ws, ids = filled
    listed = list_json(ws)
    assert [e["id"] for e in listed] == ids
    for example in listed:
        assert set(example) == FULL_FIELDS
        assert example["source"] == "cli"
        assert example["original_response"] is None
    assert listed[1]["input"] == "Hello"
    assert listed[1]["response"] == "Bonjour"


def test_list_json_of_an_empty_store_is_an_empty_list(ws):
    assert list_json(ws) == []


def test_list_search_and_limit(filled):
    ws, ids = filled
    assert [e["id"] for e in list_json(ws, "--search", "FRANCE")] == [ids[2]]
    assert [e["id"] for e in list_json(ws, "--search", "hello")] == [ids[1]]   # input field
    assert list_json(ws, "--search", "no such text") == []
    assert [e["id"] for e in list_json(ws, "--limit", "2")] == ids[:2]
    assert [e["id"] for e in list_json(ws, "--search", "n", "--limit", "1")] == ids[:1]
    lines = ok(sftchat(ws, "data", "list", "--search", "colour", in_process=True)).stdout.splitlines()
    assert len(lines) == 1 and "Name a colour" in lines[0]


def test_show_human_and_json(filled):
    ws, ids = filled
    human = ok(sftchat(ws, "data", "show", str(ids[1]), in_process=True)).stdout
    assert str(ids[1]) in human
    assert "Translate to French" in human and "Hello" in human and "Bonjour" in human
    shown = json.loads(ok(sftchat(ws, "data", "show", str(ids[1]), "--json", in_process=True)).stdout)
    assert set(shown) == FULL_FIELDS | {"rejected"}  # the answers not chosen for it
    assert shown["rejected"] == []
    assert shown["id"] == ids[1]
    assert (shown["instruction"], shown["input"], shown["response"]) == (
        "Translate to French", "Hello", "Bonjour")


def test_show_of_a_chat_example_includes_the_original_answer(ws):
    with ExampleStore(ws / "data") as store:
        example_id = store.add("Capital of Australia?", "Canberra",
                               original_response="Sydney", source="chat")
    human = ok(sftchat(ws, "data", "show", str(example_id), in_process=True)).stdout
    assert "Canberra" in human and "Sydney" in human
    shown = json.loads(ok(sftchat(ws, "data", "show", str(example_id), "--json", in_process=True)).stdout)
    assert shown["original_response"] == "Sydney"
    assert shown["source"] == "chat"


def test_show_unknown_id_is_a_one_line_error(filled):
    ws, _ = filled
    assert_one_line_error(sftchat(ws, "data", "show", "999", in_process=True), "999")


def test_human_output_never_writes_terminal_escape_sequences_to_a_terminal(ws):
    # Model output is untrusted (GUIDE §7): stored text must not reach a terminal raw.
    evil = "ok\x1b]0;pwned\x07\x1b[2J\x1b[31mred"
    with ExampleStore(ws / "data") as store:
        example_id = store.add("Question " + evil, "Answer " + evil, original_response=evil,
                               source="chat")
    for args in (["data", "list"], ["data", "show", str(example_id)]):
        output = read_pty(cli_command(ws, *args), clean_env())
        assert "Question" in output
        assert "\x1b" not in output, (args, output)
        assert "\x07" not in output, (args, output)


# --------------------------------------------------------------------------- edit / rm


def test_edit_changes_the_given_field_and_updated_at(filled):
    ws, ids = filled
    before = json.loads(ok(sftchat(ws, "data", "show", str(ids[0]), "--json", in_process=True)).stdout)
    result = ok(sftchat(ws, "data", "edit", str(ids[0]), "--response", "Green", in_process=True))
    assert result.stdout.strip() == str(ids[0])
    after = json.loads(ok(sftchat(ws, "data", "show", str(ids[0]), "--json", in_process=True)).stdout)
    assert after["response"] == "Green"
    assert after["instruction"] == before["instruction"]
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] > before["updated_at"]
    # The other examples are untouched.
    assert [r[3] for r in store_rows(ws)] == ["Green", "Bonjour", "Paris"]


def test_edit_input_and_instruction_from_stdin(filled):
    ws, ids = filled
    ok(sftchat(ws, "data", "edit", str(ids[1]), "--input", "", in_process=True))
    ok(sftchat(ws, "data", "edit", str(ids[1]), "--instruction", "-",
               stdin="Translate\nto German\n", in_process=True))
    ok(sftchat(ws, "data", "edit", str(ids[1]), "--response", "Hallo", in_process=True))
    assert store_rows(ws)[1] == (ids[1], "Translate\nto German", "", "Hallo")


def test_edit_without_flags_is_a_one_line_error(filled):
    ws, ids = filled
    before = store_rows(ws)
    assert_one_line_error(sftchat(ws, "data", "edit", str(ids[0]), in_process=True), "--response")
    assert store_rows(ws) == before


def test_edit_to_an_empty_response_is_refused_and_changes_nothing(filled):
    ws, ids = filled
    before = store_rows(ws)
    assert_one_line_error(sftchat(ws, "data", "edit", str(ids[0]), "--response", " ", in_process=True),
                          "empty")
    assert store_rows(ws) == before


def test_edit_unknown_id_is_a_one_line_error(filled):
    ws, _ = filled
    before = store_rows(ws)
    assert_one_line_error(sftchat(ws, "data", "edit", "999", "--response", "x", in_process=True), "999")
    assert store_rows(ws) == before


def test_rm_then_show_errors(filled):
    ws, ids = filled
    result = ok(sftchat(ws, "data", "rm", str(ids[1]), in_process=True))
    assert result.stdout == ""
    assert [e["id"] for e in list_json(ws)] == [ids[0], ids[2]]
    assert_one_line_error(sftchat(ws, "data", "show", str(ids[1]), in_process=True), str(ids[1]))
    assert_one_line_error(sftchat(ws, "data", "rm", str(ids[1]), in_process=True), str(ids[1]))
    assert len(store_rows(ws)) == 2


# --------------------------------------------------------------------------- stats


def test_stats_json(filled):
    ws, _ = filled
    stats = json.loads(ok(sftchat(ws, "data", "stats", "--json", in_process=True)).stdout)
    assert stats["examples"] == 3
    assert stats["with_input"] == 1
    assert stats["sources"] == {"cli": 3}
    assert stats["edited_from_chat"] == 0
    human = ok(sftchat(ws, "data", "stats", in_process=True)).stdout
    assert "examples" in human and "3" in human


def test_stats_json_of_an_empty_store(ws):
    stats = json.loads(ok(sftchat(ws, "data", "stats", "--json", in_process=True)).stdout)
    assert stats["examples"] == 0


# --------------------------------------------------------------------------- import / export

RECORDS = [
    {"instruction": "Name a colour", "input": "", "output": "Blue"},
    {"instruction": "Translate", "input": "Hello", "output": "Bonjour"},
    {"instruction": "Unicode ✓", "input": "", "output": "日本語 🤖\nsecond line"},
]


def test_import_alpaca_and_jsonl_then_export_both_formats(ws, tmp_path):
    alpaca = tmp_path / "in.json"
    alpaca.write_text(json.dumps(RECORDS, ensure_ascii=False, indent=2), encoding="utf-8")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"instruction": r["instruction"], "input": r["input"],
                                         "response": r["output"]}) + "\n" for r in RECORDS),
                     encoding="utf-8")

    result = ok(sftchat(ws, "data", "import", str(alpaca)))
    assert "imported 3" in result.stderr
    ok(sftchat(ws, "data", "import", str(jsonl)))
    listed = list_json(ws)
    assert len(listed) == 6
    assert {e["source"] for e in listed[:3]} == {f"import:{alpaca}"}
    assert {e["source"] for e in listed[3:]} == {f"import:{jsonl}"}

    out_json = tmp_path / "out" / "export.json"
    out_jsonl = tmp_path / "out" / "export.jsonl"
    result = ok(sftchat(ws, "data", "export", str(out_json)))
    assert "exported 6" in result.stderr
    ok(sftchat(ws, "data", "export", str(out_jsonl)))

    exported = json.loads(out_json.read_text(encoding="utf-8"))
    assert exported == RECORDS + RECORDS
    lines = out_jsonl.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == RECORDS + RECORDS


def test_export_format_flag_overrides_the_extension(filled, tmp_path):
    ws, _ = filled
    target = tmp_path / "data.txt"
    ok(sftchat(ws, "data", "export", str(target), "--format", "jsonl", in_process=True))
    lines = target.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["output"] for line in lines] == ["Blue", "Bonjour", "Paris"]
    ok(sftchat(ws, "data", "export", str(target), "--format", "alpaca", in_process=True))
    assert [r["output"] for r in json.loads(target.read_text(encoding="utf-8"))] == [
        "Blue", "Bonjour", "Paris"]


def test_import_with_explicit_format(ws, tmp_path):
    path = tmp_path / "records.txt"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS), encoding="utf-8")
    ok(sftchat(ws, "data", "import", str(path), "--format", "jsonl", in_process=True))
    assert [r[1] for r in store_rows(ws)] == [r["instruction"] for r in RECORDS]


def test_exported_file_imports_into_another_workspace_identically(filled, tmp_path):
    ws, _ = filled
    target = tmp_path / "roundtrip.jsonl"
    ok(sftchat(ws, "data", "export", str(target), in_process=True))
    other = tmp_path / "other"
    ok(sftchat(other, "data", "import", str(target), in_process=True))
    assert [r[1:] for r in store_rows(other)] == [r[1:] for r in store_rows(ws)]


@pytest.mark.parametrize("name, content, fragment", [
    ("truncated.json", json.dumps(RECORDS)[:40], "not valid JSON"),
    ("bad.jsonl", json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1]) + "\n{oops\n",
     "line 3"),
    ("missing.json", json.dumps([RECORDS[0], {"instruction": "no answer"}]), "record 2"),
    ("empty.json", "[]", "no records"),
    ("halfbad.json", json.dumps([RECORDS[0], {"instruction": "x", "output": ""}]), "empty"),
])
def test_bad_import_is_a_one_line_error_and_leaves_the_store_unchanged(
        filled, tmp_path, name, content, fragment):
    ws, _ = filled
    before = store_rows(ws)
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    assert_one_line_error(sftchat(ws, "data", "import", str(path), in_process=True), fragment, name)
    assert store_rows(ws) == before


def test_import_of_a_missing_or_non_utf8_file_is_a_one_line_error(filled, tmp_path):
    ws, _ = filled
    before = store_rows(ws)
    assert_one_line_error(sftchat(ws, "data", "import", str(tmp_path / "nope.json"), in_process=True),
                          "no such file")
    latin = tmp_path / "latin.json"
    latin.write_bytes('[{"instruction": "café", "output": "x"}]'.encode("latin-1"))
    assert_one_line_error(sftchat(ws, "data", "import", str(latin), in_process=True), "UTF-8")
    assert store_rows(ws) == before


# --------------------------------------------------------------------------- global options


def test_global_options_before_and_after_the_subcommand(tmp_path):
    before_ws = tmp_path / "before"
    after_ws = tmp_path / "after"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ok(sftchat(None, "--workspace", str(before_ws), "data", "add",
               "--instruction", "a", "--response", "b", cwd=cwd))
    ok(sftchat(None, "data", "add", "--instruction", "c", "--response", "d",
               "--workspace", str(after_ws), cwd=cwd))
    ok(sftchat(None, "data", "--workspace", str(after_ws), "add",
               "--instruction", "e", "--response", "f", cwd=cwd))
    assert [r[1] for r in store_rows(before_ws)] == ["a"]
    assert [r[1] for r in store_rows(after_ws)] == ["c", "e"]
    assert not (cwd / "data").exists()

    listed_before = json.loads(ok(sftchat(None, "--workspace", str(before_ws), "data",
                                          "list", "--json", cwd=cwd)).stdout)
    listed_after = json.loads(ok(sftchat(None, "data", "list", "--json", "--workspace",
                                         str(after_ws), cwd=cwd)).stdout)
    assert [e["instruction"] for e in listed_before] == ["a"]
    assert [e["instruction"] for e in listed_after] == ["c", "e"]


def test_other_global_options_are_accepted_after_the_subcommand(filled):
    ws, ids = filled
    result = ok(sftchat(None, "data", "list", "--json", "--workspace", str(ws),
                        "--model", "builtin", "--device", "cpu", "--no-quantize",
                        "--template", "chatml", in_process=True))
    assert [e["id"] for e in json.loads(result.stdout)] == ids


def test_sftchat_home_selects_the_workspace(tmp_path):
    home = tmp_path / "home"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = clean_env(SFTCHAT_HOME=str(home))
    result = ok(sftchat(None, "data", "add", "--instruction", "via env", "--response", "ok",
                        env=env, cwd=cwd))
    assert store_rows(home) == [(int(result.stdout), "via env", "", "ok")]
    assert not (cwd / "data").exists()
    # The flag beats the environment.
    flagged = tmp_path / "flagged"
    ok(sftchat(flagged, "data", "add", "--instruction", "via flag", "--response", "ok",
               env=env, cwd=cwd))
    assert [r[1] for r in store_rows(flagged)] == ["via flag"]
    assert [r[1] for r in store_rows(home)] == ["via env"]


def test_workspace_defaults_to_the_current_directory(tmp_path):
    ok(sftchat(None, "data", "add", "--instruction", "here", "--response", "ok",
               cwd=tmp_path))
    assert [r[1] for r in store_rows(tmp_path)] == ["here"]


def test_invalid_config_is_a_one_line_error(ws):
    (ws / "sftchat.toml").write_text("[training]\nlr = -1.0\n", encoding="utf-8")
    assert_one_line_error(sftchat(ws, "data", "list", in_process=True), "lr")
    assert_one_line_error(sftchat(ws, "data", "list", env=clean_env(SFTCHAT_DEVICE="gpu")),
                          "device")


def test_corrupted_database_is_a_one_line_error(ws):
    (ws / "data").mkdir()
    (ws / "data" / "examples.sqlite3").write_bytes(b"not a database" * 200)
    assert_one_line_error(sftchat(ws, "data", "list"), "cannot open the dataset")


def test_debug_flag_shows_the_traceback(ws):
    result = sftchat(ws, "data", "show", "999", "--debug")
    assert result.returncode != 0
    assert "Traceback" in result.stderr


# --------------------------------------------------------------------------- no heavy imports


@pytest.mark.parametrize("argv", [
    ["data", "list"],
    ["data", "add", "--instruction", "q", "--response", "a"],
    ["data", "stats", "--json"],
    ["adapters", "list"],
])
def test_data_and_adapters_commands_never_import_torch_or_transformers(ws, argv):
    code = (
        "import sys, json\n"
        "from sftchat.cli import main\n"
        f"code = main({['--workspace', str(ws), *argv]!r})\n"
        "print(json.dumps([code, 'torch' in sys.modules, 'transformers' in sys.modules]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=clean_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    exit_code, torch_loaded, transformers_loaded = json.loads(result.stdout.splitlines()[-1])
    assert exit_code == 0
    assert torch_loaded is False
    assert transformers_loaded is False

