"""Training faults: kill -9, crash, out of memory, curating during a run (issue 6, items 2, 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading

import pytest

from cli_helpers import cli_command, sftchat
from sftchat.config import load_settings
from sftchat.dataset.store import ExampleStore
from sftchat.training.events import parse_event


def _add(workspace, count=2):
    with ExampleStore(workspace / "data") as store:
        for number in range(count):
            store.add(f"Question {number}?", f"Answer {number}.")


def _visible(workspace):
    folder = workspace / "adapters"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) \
        if folder.exists() else []


def _start_trainer(workspace, *extra):
    return subprocess.Popen(
        cli_command(workspace, "train", "--json", "--max-steps", "100000", "--no-early-stop",
                    *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(process):
    for line in process.stdout:
        event = parse_event(line)
        if event and event["event"] == "step":
            return event
    raise AssertionError("the trainer never reported a step")


def test_kill_9_leaves_no_visible_adapter_and_the_next_run_cleans_up(ws):
    _add(ws)
    process = _start_trainer(ws, "--name", "doomed")
    _wait_for_step(process)
    process.send_signal(signal.SIGKILL)
    process.wait(60)
    assert _visible(ws) == []
    assert any(p.name.startswith(".staging-doomed-") for p in (ws / "adapters").iterdir())
    sftchat(ws, "train", "--name", "after", "--max-steps", "2", check=True, in_process=True)
    assert sorted(p.name for p in (ws / "adapters").iterdir()) == ["after"]


def test_curating_during_training_does_not_change_what_it_trains_on(ws):
    _add(ws, count=3)
    process = _start_trainer(ws, "--name", "snap", "--max-steps", "6")
    _wait_for_step(process)
    with ExampleStore(ws / "data") as store:  # curate while the run goes on
        store.add("Added during training?", "Yes.")
        store.delete(1)
    process.communicate(timeout=300)
    assert process.returncode == 0
    meta = json.loads((ws / "adapters/snap/sftchat.json").read_text())
    assert meta["dataset"]["example_ids"] == [1, 2, 3]
    snapshot = (ws / "adapters/snap/train.jsonl").read_text().splitlines()
    assert [json.loads(line)["instruction"] for line in snapshot] == \
        ["Question 0?", "Question 1?", "Question 2?"]


def _run_in_process(workspace, monkeypatch, failure: BaseException):
    """Run the real trainer in-process with its loss function made to raise `failure`."""
    from sftchat.training import loss
    from sftchat.training.trainer import run_training

    def explode(self, examples):
        raise failure

    monkeypatch.setattr(loss.LossFunction, "learned_logits", explode)
    settings = load_settings(workspace=str(workspace))
    events = []
    with pytest.raises(Exception) as raised:
        run_training(settings, settings.training, events.append, name="broken",
                     stop=threading.Event())
    return raised.value, events


def test_cuda_out_of_memory_is_explained_and_publishes_nothing(ws, monkeypatch):
    # A fake: this machine has no GPU, so the out-of-memory error is raised by hand at the
    # point where a real CUDA OOM would surface (the training step).
    import torch

    from sftchat.training.errors import TrainingError

    _add(ws)
    error, _ = _run_in_process(ws, monkeypatch, torch.OutOfMemoryError("CUDA out of memory"))
    assert isinstance(error, TrainingError)
    assert "out of memory" in str(error) and "--batch-size" in str(error) \
        and "--max-length" in str(error)
    assert os.listdir(ws / "adapters") == []


def test_a_crash_in_training_publishes_nothing(ws, monkeypatch):
    _add(ws)
    error, events = _run_in_process(ws, monkeypatch, RuntimeError("boom"))
    assert str(error) == "boom"
    assert [e["event"] for e in events] == ["started"]
    assert os.listdir(ws / "adapters") == []


def _read_lock_holder(workspace):
    from sftchat.training.workspace_lock import LOCK_FILE

    return json.loads((workspace / "adapters" / LOCK_FILE).read_text(encoding="utf-8"))


def test_a_second_run_on_the_same_workspace_is_refused_with_who_holds_it(ws):
    """Issue 6, item 5: two runs at once would fight over GPU memory and the adapters folder;
    the second one says why it cannot start and changes nothing, the first goes on."""
    _add(ws)
    first = _start_trainer(ws)  # no --name: the default, time-stamped name
    started = next(event for event in map(parse_event, first.stdout)
                   if event and event["event"] == "started")
    _wait_for_step(first)

    second = sftchat(ws, "train", "--name", "second", "--max-steps", "1", in_process=True)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("sftchat: error: another training run is using this workspace")
    assert f"adapter {started['name']}" in lines[0] and f"pid {first.pid}" in lines[0]
    assert "Traceback" not in second.stderr
    assert not any(p.name.startswith(".staging-second") for p in (ws / "adapters").iterdir())

    # The refused run disturbed nothing: the first is still training, and stops cleanly.
    assert first.poll() is None
    _wait_for_step(first)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert first.returncode == 130
    # Released: the next run trains, publishes and leaves no lock file behind.
    sftchat(ws, "train", "--name", "after", "--max-steps", "1", check=True, in_process=True)
    assert sorted(p.name for p in (ws / "adapters").iterdir()) == ["after"]


def test_the_lock_of_a_killed_run_does_not_outlive_it(ws):
    _add(ws)
    process = _start_trainer(ws, "--name", "killed")
    _wait_for_step(process)
    assert _read_lock_holder(ws)["pid"] == process.pid
    process.send_signal(signal.SIGKILL)
    process.wait(60)
    sftchat(ws, "train", "--name", "after", "--max-steps", "1", check=True, in_process=True)
    assert _visible(ws) == ["after"]

