"""Conversations imported, trained, answered and exported on the built-in model (issue 19).

Two conversations ask the same second question after different first turns and expect
different answers: a model trained on single turns could give at most one of them back,
so both coming back proves the earlier turn is in what the model learned. The workspace is
made as a user would: a ShareGPT file with system prompts and multi-turn records (the first
answers marked `"weight": 0`, as the chat saves them: only the last answer learned) imported
with `sftchat data import`, then the real `sftchat train` subprocess; then the engine answers
with the same history, `sftchat eval` replays the stored conversations, the adapter's
`train.jsonl` holds them whole, and `data export` gives the file back unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import sftchat
from conftest import shared_dir

from sftchat.config import GenerationSettings, load_settings
from sftchat.conversation import Turn
from sftchat.dataset.store import ExampleStore
from sftchat.engine import ChatEngine

SYSTEM = "You keep track of pets."
CONVERSATIONS = [
    # (first turn, its answer, second question, second answer)
    ("My dog is called Rex.", "Noted.", "What is my dog called?", "Rex, a good dog."),
    ("My dog is called Bo.", "Noted.", "What is my dog called?", "Bo! Your dog is Bo."),
]
SINGLE = ("Say hi.", "Hi there!")
GREEDY = GenerationSettings(temperature=0, max_new_tokens=24)


def _sharegpt_lines() -> str:
    records = [{"conversations": [
        {"from": "system", "value": SYSTEM}, {"from": "human", "value": first},
        {"from": "gpt", "value": reply, "weight": 0}, {"from": "human", "value": question},
        {"from": "gpt", "value": answer}]} for first, reply, question, answer in CONVERSATIONS]
    records.append({"conversations": [{"from": "human", "value": SINGLE[0]},
                                      {"from": "gpt", "value": SINGLE[1]}]})
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


@pytest.fixture(scope="module")
def conversations_workspace(tmp_path_factory, builtin_cache) -> Path:
    def build(workspace: Path) -> None:
        source = workspace / "talks.jsonl"
        source.write_text(_sharegpt_lines(), encoding="utf-8")
        sftchat(workspace, "data", "import", str(source), check=True, in_process=True)
        sftchat(workspace, "train", "--name", "talks", check=True, timeout=600)

    return shared_dir(tmp_path_factory, "conversations", build)


def test_the_import_keeps_system_prompts_and_earlier_turns(conversations_workspace):
    with ExampleStore(conversations_workspace / "data") as store:
        first = store.get(1)
    assert first.system == SYSTEM
    assert first.context == (Turn(CONVERSATIONS[0][0], CONVERSATIONS[0][1], learn=False),)
    assert (first.instruction, first.response) == CONVERSATIONS[0][2:]


def test_export_gives_the_imported_file_back_unchanged(conversations_workspace, tmp_path):
    exported = tmp_path / "back.jsonl"
    sftchat(conversations_workspace, "data", "export", str(exported), "--format", "sharegpt",
            check=True, in_process=True)
    assert exported.read_text(encoding="utf-8") == _sharegpt_lines()


@pytest.fixture(scope="module")
def engine(conversations_workspace):
    engine = ChatEngine.from_settings(load_settings(workspace=str(conversations_workspace)))
    engine.use_adapter("talks")
    return engine


def test_the_same_question_gets_the_answer_its_context_asks_for(engine):
    for first, reply, question, answer in CONVERSATIONS:
        got = engine.generate(question, history=[Turn(first, reply)], system=SYSTEM,
                              settings=GREEDY).collect()
        assert got == answer, f"after {first!r}"
    assert engine.generate(SINGLE[0], settings=GREEDY).collect() == SINGLE[1]


def test_the_snapshot_holds_the_whole_conversations(conversations_workspace):
    lines = (conversations_workspace / "adapters" / "talks" / "train.jsonl").read_text(
        encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert records[0]["system"] == SYSTEM
    assert records[0]["context"] == [{"instruction": CONVERSATIONS[0][0],
                                      "response": CONVERSATIONS[0][1]}]
    assert "system" not in records[2] and "context" not in records[2]  # single-turn as before
    meta = json.loads((conversations_workspace / "adapters" / "talks" / "sftchat.json")
                      .read_text(encoding="utf-8"))
    assert meta["metrics"]["replay"]["reproduced"] == 3


def test_eval_replays_conversations_as_they_are_stored(conversations_workspace):
    report = json.loads(sftchat(conversations_workspace, "eval", "--adapter", "talks",
                                "--json", check=True, in_process=True).stdout)
    assert report["candidate"]["curated"] == 3 and report["candidate"]["examples"] == 3
    # The base model (random weights) reproduces none of them.
    assert report["current"]["curated"] == 0
