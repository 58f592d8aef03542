"""Issue 21: `sftchat train` learns from rejected answers, through the real trainer process on
the built-in model: a DPO pair (a curated answer and its rejected original) and a bad answer
with no replacement — the model's own greedy answer, kept as ctrl+x keeps it. After one run
with default settings the bad answer does not come back, and the run says so everywhere it
reports (its events, `sftchat.json`, `rejected.jsonl`, `adapters show`). Refusals of an
objective with nothing to learn from are in-process (one clear line, before the model loads).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, ok, sftchat
from conftest import CURATED, shared_dir
from sftchat.dataset.preferences import gives
from sftchat.dataset.store import ExampleStore
from sftchat.training.events import parse_event

JOKE = "Tell me a joke."


@pytest.fixture(scope="module")
def taught(tmp_path_factory) -> tuple[Path, str, list[dict]]:
    """(workspace, the bad answer, the run's events): CURATED with the first answer's original
    rejected, plus the base model's own answer to JOKE kept as bad; one default `sftchat
    train --json`."""
    def build(workspace: Path) -> None:
        bad = ok(sftchat(workspace, "ask", JOKE, "--max-new-tokens", "24",
                         in_process=True)).stdout.strip()
        with ExampleStore(workspace / "data") as store:
            for index, (instruction, response) in enumerate(CURATED):
                store.add(instruction, response,
                          rejected=[("It is not what you think.", "cli")] if index == 0 else ())
            store.add_rejected(JOKE, bad)   # source "bad", no replacement: ctrl+x
        (workspace / "bad.txt").write_text(bad, encoding="utf-8")
        result = ok(sftchat(workspace, "train", "--json", "--name", "taught", timeout=600))
        (workspace / "events.jsonl").write_text(result.stdout, encoding="utf-8")

    workspace = shared_dir(tmp_path_factory, "preferences", build)
    events = [e for e in map(parse_event, (workspace / "events.jsonl").read_text().splitlines())
              if e]
    return workspace, (workspace / "bad.txt").read_text(encoding="utf-8"), events


def test_the_run_learns_the_pair_and_avoids_the_bad_answer(taught):
    workspace, bad, events = taught
    assert bad, "the base model gave an answer to keep as bad"
    started, finished = events[0], events[-1]
    assert (started["objective"], started["pairs"], started["avoid"]) == ("dpo+kto", 1, 1)
    steps = [e for e in events if e["event"] == "step"]
    assert all(isinstance(e["preference_loss"], float) and e["rejected"] == 2 for e in steps)
    assert steps[0]["preference_loss"] > steps[-1]["preference_loss"]
    preferences = finished["preferences"]
    assert preferences["objective"] == "dpo+kto"
    assert preferences["accuracy"] == preferences["reward_accuracy"] == 1.0
    assert preferences["mean_reward_margin"] > 1.0
    assert (preferences["still_given"], preferences["still_given_ids"]) == (0, [])
    # The chat's own path: the bad answer does not come back, the curated ones do.
    answer = ok(sftchat(workspace, "ask", JOKE, "--adapter", "taught", in_process=True))
    assert not gives(answer.stdout.strip(), bad), answer.stdout
    question, response = CURATED[0]
    assert ok(sftchat(workspace, "ask", question, "--adapter", "taught",
                      in_process=True)).stdout.strip() == response


def test_the_adapter_records_what_it_learned_from(taught):
    workspace, bad, events = taught
    folder = workspace / "adapters" / "taught"
    meta = json.loads((folder / "sftchat.json").read_text(encoding="utf-8"))
    assert meta["hyperparameters"]["objective"] == "auto"
    assert meta["dataset"]["rejected"] == {"objective": "dpo+kto", "pairs": 1, "avoid": 1,
                                           "unused": 0, "skipped_too_long": [], "ids": [1, 2]}
    assert meta["metrics"]["preferences"]["still_given"] == 0
    lines = [json.loads(line) for line in (folder / "rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], r["example_id"], r["output"]) for r in lines] == \
        [(1, 1, "It is not what you think."), (2, None, bad)]
    evaluated = ok(sftchat(workspace, "eval", "--adapter", "taught", in_process=True))
    assert "taught's training run: prefers the chosen answer in 1/1 pair" in evaluated.stdout
    assert "bad answers avoided 2/2" in evaluated.stdout
    shown = ok(sftchat(workspace, "adapters", "show", "taught", in_process=True))
    assert "prefers the chosen answer in 1/1 pair" in shown.stderr
    assert "avoids 2/2 rejected answers" in shown.stderr


def test_the_human_progress_names_the_rejected_answers(taught, tmp_path):
    workspace, _, _ = taught
    copy = tmp_path / "ws"
    copy.mkdir()
    with ExampleStore(workspace / "data") as source, ExampleStore(copy / "data") as store:
        for example in source.snapshot()[:2]:
            store.add(example.instruction, example.response,
                      rejected=[(r.response, r.source) for r in source.rejected_for(example.id)])
    result = ok(sftchat(copy, "train", "--max-steps", "2", "--name", "two", in_process=True))
    assert "on 2 examples and 1 rejected answer (dpo on 1 pair)" in result.stderr
    assert "avoided " in result.stderr and "prefers the chosen answer in" in result.stderr
    # --objective sft leaves them out.
    result = ok(sftchat(copy, "train", "--max-steps", "1", "--name", "plain", "--objective",
                        "sft", in_process=True))
    assert "rejected answers" not in result.stderr.split("\n")[0]
    meta = json.loads((copy / "adapters" / "plain" / "sftchat.json").read_text())
    assert meta["metrics"]["preferences"] is None
    assert meta["dataset"]["rejected"]["unused"] == 1
    assert not (copy / "adapters" / "plain" / "rejected.jsonl").exists()


def test_an_objective_with_nothing_to_learn_from_is_one_line(tmp_path):
    with ExampleStore(tmp_path / "data") as store:
        store.add("Ping?", "Pong.")
    assert_one_line_error(sftchat(tmp_path, "train", "--objective", "kto", in_process=True),
                          "--objective kto needs rejected answers", "ctrl+x")
    with ExampleStore(tmp_path / "data") as store:
        store.add_rejected("Joke?", "No.")
    assert_one_line_error(sftchat(tmp_path, "train", "--objective", "dpo", in_process=True),
                          "--objective dpo needs rejected answers that were replaced",
                          "--objective auto or kto")
    bad_only = tmp_path / "bad-only"
    with ExampleStore(bad_only / "data") as store:
        store.add_rejected("Joke?", "No.")
    assert_one_line_error(sftchat(bad_only, "train", in_process=True),
                          "1 rejected answer but no curated one", "ctrl+s")
