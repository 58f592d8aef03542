"""`sftchat data add --instruction TEXT --rejected TEXT` with no `--response`: a bad answer kept
with no replacement (what ctrl+x keeps in the chat), through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import assert_one_line_error, ok, sftchat

from sftchat.dataset.store import ExampleStore


def rejected_rows(workspace: Path) -> list:
    with ExampleStore(workspace / "data") as store:
        return list(store.iter_rejected())


def example_count(workspace: Path) -> int:
    with ExampleStore(workspace / "data") as store:
        return len(list(store.iter_examples()))


def test_rejected_without_response_keeps_a_bad_answer_and_prints_its_rejected_id(ws):
    result = ok(sftchat(ws, "data", "add", "--instruction", "Capital of France?",
                        "--rejected", "Lyon, obviously.", "--input", "one word",
                        "--system", "Be brief."))
    [row] = rejected_rows(ws)
    assert result.stdout == f"rejected answer {row.id} kept (no replacement yet)\n"
    assert (row.example_id, row.source) == (None, "cli")
    assert (row.instruction, row.input, row.response, row.system) == (
        "Capital of France?", "one word", "Lyon, obviously.", "Be brief.")
    assert example_count(ws) == 0  # no example: nothing to learn as an answer


def test_several_rejected_answers_each_get_a_line_in_order(ws):
    result = ok(sftchat(ws, "data", "add", "--instruction", "Say hi", "--rejected", "Go away",
                        "--rejected", "No.", in_process=True))
    rows = rejected_rows(ws)
    assert [r.response for r in rows] == ["Go away", "No."]
    assert result.stdout.splitlines() == [
        f"rejected answer {r.id} kept (no replacement yet)" for r in rows]
    assert all(r.example_id is None for r in rows)


def test_bad_answers_show_in_stats_and_kto_export_as_false(ws, tmp_path):
    ok(sftchat(ws, "data", "add", "--instruction", "Name a colour", "--response", "Blue",
               in_process=True))
    ok(sftchat(ws, "data", "add", "--instruction", "Capital of Italy?", "--rejected", "Paris",
               in_process=True))
    stats = json.loads(ok(sftchat(ws, "data", "stats", "--json", in_process=True)).stdout)
    assert (stats["examples"], stats["rejected_answers"]) == (1, 1)

    out = tmp_path / "kto.jsonl"
    ok(sftchat(ws, "data", "export", str(out), "--format", "kto", in_process=True))
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records == [
        {"prompt": "Name a colour", "completion": "Blue", "label": True},
        {"prompt": "Capital of Italy?", "completion": "Paris", "label": False},
    ]
    # No pair without a chosen answer: DPO has nothing to export from it.
    dpo = tmp_path / "dpo.jsonl"
    ok(sftchat(ws, "data", "export", str(dpo), "--format", "dpo", in_process=True))
    assert dpo.read_text(encoding="utf-8") == ""


def test_system_prompt_makes_the_kto_record_conversational(ws, tmp_path):
    ok(sftchat(ws, "data", "add", "--instruction", "Hi", "--rejected", "Whatever.",
               "--system", "Be kind.", in_process=True))
    out = tmp_path / "kto.jsonl"
    ok(sftchat(ws, "data", "export", str(out), "--format", "kto", in_process=True))
    [record] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert record == {"prompt": [{"role": "system", "content": "Be kind."},
                                 {"role": "user", "content": "Hi"}],
                      "completion": [{"role": "assistant", "content": "Whatever."}],
                      "label": False}


def test_neither_response_nor_rejected_is_one_line_usage_error(ws):
    result = sftchat(ws, "data", "add", "--instruction", "Say hi")
    assert_one_line_error(result, "--response", "--rejected")
    assert result.returncode == 2  # a usage error, as argparse's own are
    assert result.stdout == ""
    assert not (ws / "data").exists() or (example_count(ws), rejected_rows(ws)) == (0, [])


def test_rejected_dash_reads_stdin(ws):
    result = ok(sftchat(ws, "data", "add", "--instruction", "Write a haiku", "--rejected", "-",
                        stdin="not\na haiku\n"))
    [row] = rejected_rows(ws)
    assert row.response == "not\na haiku"
    assert result.stdout == f"rejected answer {row.id} kept (no replacement yet)\n"

    ok(sftchat(ws, "data", "add", "--instruction", "-", "--rejected", "Meh", "--rejected", "No",
               stdin="multi\nline\n", in_process=True))
    assert [(r.instruction, r.response) for r in rejected_rows(ws)[1:]] == [
        ("multi\nline", "Meh"), ("multi\nline", "No")]


def test_stdin_is_read_once_only(ws):
    for extra in (("--instruction", "-", "--rejected", "-"),
                  ("--instruction", "x", "--rejected", "-", "--rejected", "-")):
        result = sftchat(ws, "data", "add", *extra, stdin="text\n", in_process=True)
        assert_one_line_error(result, "stdin")
    assert not (ws / "data").exists() or rejected_rows(ws) == []


def test_an_empty_rejected_answer_stores_none_of_them(ws):
    result = sftchat(ws, "data", "add", "--instruction", "Q", "--rejected", "fine",
                     "--rejected", "  ", in_process=True)
    assert_one_line_error(result, "empty")
    assert result.stdout == ""
    assert rejected_rows(ws) == []


def test_help_says_the_ids_are_rejected_answer_ids():
    text = " ".join(ok(sftchat(None, "data", "add", "--help", in_process=True)).stdout.split())
    assert "rejected-answer id" in text and "no replacement" in text
