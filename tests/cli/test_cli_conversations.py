"""Conversations on the command line (issue 19): `data add --system`, how `data list`,
`data show` and `data stats` show a system prompt and earlier turns, and their JSON.

The real store; the real command line, in-process (`sftchat.cli.main`) except for one path
through a real process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, ok, sftchat

from sftchat.conversation import Turn
from sftchat.dataset.store import ExampleStore

EARLIER = (Turn("What is the capital of France?", "Paris.", learn=True),
           Turn("Translate", "Bonjour", input="Hello"))


@pytest.fixture
def conversation(ws) -> tuple[Path, int, int]:
    """A workspace with a single-turn example and a three-turn conversation."""
    with ExampleStore(ws / "data") as store:
        plain = store.add("Name a colour", "Blue")
        chat = store.add("What is its population?", "About 2.1 million.", system="Be terse.",
                         context=EARLIER, source="chat")
    return ws, plain, chat


def test_add_with_a_system_prompt(ws):
    result = ok(sftchat(ws, "data", "add", "--instruction", "Hi", "--response", "Ahoy!",
                        "--system", "You are a pirate."))          # a real process
    example_id = int(result.stdout)
    plain = int(ok(sftchat(ws, "data", "add", "--instruction", "Hi", "--response", "Hello.",
                           in_process=True)).stdout)
    with ExampleStore(ws / "data") as store:
        assert (store.get(example_id).system, store.get(example_id).context) == \
            ("You are a pirate.", ())
        assert store.get(plain).system == ""      # no --system: no system prompt


def test_edit_the_system_prompt(conversation):
    ws, plain, chat = conversation
    ok(sftchat(ws, "data", "edit", str(plain), "--system", "Be brief.", in_process=True))
    ok(sftchat(ws, "data", "edit", str(chat), "--system", "", in_process=True))
    with ExampleStore(ws / "data") as store:
        assert store.get(plain).system == "Be brief."
        assert (store.get(chat).system, store.get(chat).context) == ("", EARLIER)
    assert_one_line_error(sftchat(ws, "data", "edit", str(plain), in_process=True),
                          "nothing to change", "--system")


def test_list_marks_conversations(conversation):
    ws, plain, chat = conversation
    lines = ok(sftchat(ws, "data", "list", in_process=True)).stdout.splitlines()
    assert len(lines) == 2
    assert "(" not in lines[0] and "Name a colour" in lines[0]
    assert lines[1].split()[0] == str(chat)
    assert "What is its population? (3 turns, system prompt)" in lines[1]
    long = "A very long follow-up question that goes on and on " * 3
    with ExampleStore(ws / "data") as store:
        store.add(long, "Yes.", context=EARLIER[:1])
    last = ok(sftchat(ws, "data", "list", in_process=True)).stdout.splitlines()[-1]
    assert "… (2 turns)" in last     # the mark survives a cut instruction


def test_show_prints_the_system_prompt_and_earlier_turns(conversation):
    ws, _, chat = conversation
    shown = ok(sftchat(ws, "data", "show", str(chat), in_process=True)).stdout
    assert shown.splitlines() == [
        f"id:        {chat}", "source:    chat",
        "turns:     3 (answers learned: 1, 3)",
        "system prompt:", "Be terse.",
        "turn 1, user:", "What is the capital of France?",
        "turn 1, assistant (learned):", "Paris.",
        "turn 2, user:", "Translate", "turn 2, input:", "Hello",
        "turn 2, assistant:", "Bonjour",
        "instruction:", "What is its population?",
        "response:", "About 2.1 million."]


def test_list_and_show_json_carry_the_system_prompt_and_the_turns(conversation):
    ws, plain, chat = conversation
    listed = json.loads(ok(sftchat(ws, "data", "list", "--json", in_process=True)).stdout)
    shown = json.loads(ok(sftchat(ws, "data", "show", str(chat), "--json",
                                  in_process=True)).stdout)
    turns = [{"instruction": "What is the capital of France?", "response": "Paris.",
              "input": "", "learn": True},
             {"instruction": "Translate", "response": "Bonjour", "input": "Hello",
              "learn": False}]
    assert (listed[0]["system"], listed[0]["context"]) == ("", [])
    assert (listed[1]["system"], listed[1]["context"]) == ("Be terse.", turns)
    assert (shown["system"], shown["context"]) == ("Be terse.", turns)
    assert listed[1]["id"] == shown["id"] == chat


def test_stats_count_conversations(conversation):
    ws, _, _ = conversation
    with ExampleStore(ws / "data") as store:
        store.add("q", "a", system="S")
    stats = json.loads(ok(sftchat(ws, "data", "stats", "--json", in_process=True)).stdout)
    assert (stats["examples"], stats["conversations"], stats["multi_turn"],
            stats["with_system"]) == (3, 2, 1, 2)
    human = ok(sftchat(ws, "data", "stats", in_process=True)).stdout
    assert any(line.split() == ["multi_turn", "1"] for line in human.splitlines())
