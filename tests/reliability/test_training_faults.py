"""Training faults: kill -9, crash, out of memory, curating during a run (issue 6, items 2, 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from conftest import run_cli
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
        [sys.executable, "-m", "sftchat.cli", "--workspace", str(workspace), "train", "--json",
         "--max-steps", "100000", *extra],
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
    run_cli("train", "--name", "after", "--max-steps", "2", workspace=ws, check=True)
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
    from sftchat.training import forward
    from sftchat.training.trainer import run_training

    def explode(self, examples):
        raise failure

    monkeypatch.setattr(forward.LossFunction, "loss_sum", explode)
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

    from sftchat.training.trainer import TrainingError

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
