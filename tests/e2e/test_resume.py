"""Issue 20, item 5: a killed or cancelled training run resumes (`sftchat train --resume`) and
ends where the uninterrupted run ends — the same final loss (and LoRA weights) — through the
real trainer process on the built-in model.

The recipe exercises what a resume could get wrong: LoRA dropout (torch's generator), two
micro-batches a step (the accumulation boundary), distillation with the quiet penalty (the
anchors, their cursor, the base's reference distributions), rejected answers (a DPO pair and
a bad answer with no replacement: the preference loss, its reference log-probabilities, which
items are met), the warm-up and cosine schedule and AdamW's moments; checkpoints every 2
steps."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli_helpers import assert_one_line_error, cli_command, ok, sftchat
from conftest import CURATED, shared_dir
from sftchat.dataset.store import ExampleStore
from sftchat.training.checkpoint import LATEST_FILE, checkpoint_dir, interrupted_run
from sftchat.training.events import parse_event
from sftchat.training.options import TrainOptionsError, parse_train_options
from sftchat.training.workspace_lock import LOCK_FILE

STEPS = 12
RECIPE = ("--name", "run", "--no-early-stop", "--max-steps", str(STEPS), "--checkpoint-every",
          "2", "--batch-size", "2", "--grad-accum", "2", "--dropout", "0.1", "--regularize",
          "distill", "--max-length", "128")
# The resumed run's final loss against the uninterrupted one's. Measured: equal to the last
# bit (so are the LoRA weights): the same process set-up runs the same float operations.
TOLERANCE = 1e-4


def _curated(workspace: Path) -> Path:
    workspace.mkdir(parents=True, exist_ok=True)
    with ExampleStore(workspace / "data") as store:
        for instruction, response in CURATED[:3]:
            store.add(instruction, response)
        store.add_rejected(CURATED[0][0], "Not this answer.", source="cli", example_id=1)
        store.add_rejected("Tell me a joke.", "I have no jokes today.")
    return workspace


def _events(stdout: str) -> list[dict]:
    return [event for event in map(parse_event, stdout.splitlines()) if event]


def _published(workspace: Path) -> dict:
    return json.loads((workspace / "adapters" / "run" / "sftchat.json").read_text())


def _weights(workspace: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(workspace / "adapters" / "run" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """Run A: the recipe from start to end, untouched (made once per test run)."""
    def build(folder: Path) -> None:
        ok(sftchat(_curated(folder / "ws"), "train", *RECIPE, timeout=600))

    return shared_dir(tmp_path_factory, "resume-uninterrupted", build) / "ws"


def _start(workspace: Path, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen(cli_command(workspace, "train", "--json", *RECIPE),
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(workspace: Path, process: subprocess.Popen) -> None:
    latest = checkpoint_dir(workspace / "adapters", "run") / LATEST_FILE
    deadline = time.monotonic() + 300
    while not latest.exists():
        assert process.poll() is None, f"the trainer ended first: {process.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """Run B: the same recipe, killed with SIGKILL once it has written its first checkpoint."""
    workspace = _curated(tmp_path_factory.mktemp("killed") / "ws")
    process = _start(workspace)
    _wait_for_checkpoint(workspace, process)
    process.send_signal(signal.SIGKILL)
    process.wait(60)
    process.stderr.close()
    return workspace


def _copy(workspace: Path, to: Path) -> Path:
    shutil.copytree(workspace, to / "ws")
    return to / "ws"


def _assert_same_run(resumed: Path, reference: Path) -> None:
    import torch

    a, b = _published(reference)["metrics"], _published(resumed)["metrics"]
    assert math.isclose(b["final_loss"], a["final_loss"], rel_tol=TOLERANCE), \
        (a["loss_curve"], b["loss_curve"])
    assert len(b["loss_curve"]) == len(a["loss_curve"]) == STEPS
    assert b["preferences"]["pairs"] == a["preferences"]["pairs"] == 1
    assert b["preferences"]["mean_margin"] == pytest.approx(a["preferences"]["mean_margin"],
                                                            rel=TOLERANCE)
    wa, wb = _weights(reference), _weights(resumed)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=TOLERANCE, atol=1e-7), key


def test_a_run_killed_with_9_resumes_to_the_uninterrupted_loss(killed, uninterrupted,
                                                               tmp_path):
    workspace = _copy(killed, tmp_path)
    adapters = workspace / "adapters"
    interrupted = interrupted_run(workspace)
    assert interrupted is not None and interrupted.name == "run"
    assert 2 <= interrupted.step < STEPS and interrupted.total_steps == STEPS
    assert (adapters / LOCK_FILE).exists()   # left by the kill, but no longer locked
    with ExampleStore(workspace / "data") as store:   # the dataset moves on meanwhile
        store.add("Added after the kill?", "Not trained on by this run.")
        store.add_rejected("Another joke?", "Added after the kill: not learned from.")

    result = ok(sftchat(workspace, "train", "--json", "--resume", timeout=600))

    events = _events(result.stdout)
    started, finished = events[0], events[-1]
    assert started["event"] == "started" and finished["event"] == "finished"
    assert started["resumed_from_step"] == interrupted.step and started["dataset_changed"]
    assert "the dataset has changed since the run started" in result.stderr
    assert [e["step"] for e in events if e["event"] == "step"] == \
        list(range(interrupted.step + 1, STEPS + 1))
    reference = _published(uninterrupted)
    assert math.isclose(finished["final_loss"], reference["metrics"]["final_loss"],
                        rel_tol=TOLERANCE)
    _assert_same_run(workspace, uninterrupted)
    meta = _published(workspace)
    assert meta["dataset"]["example_ids"] == reference["dataset"]["example_ids"] == [1, 2, 3]
    # The rejected answers of its snapshot, not the one added after the kill.
    assert meta["dataset"]["rejected"]["ids"] == reference["dataset"]["rejected"]["ids"] == [1, 2]
    assert meta["resumed_at_step"] == interrupted.step
    # Published: the checkpoint is gone, and so are the lock and the staging folder.
    assert sorted(p.name for p in adapters.iterdir()) == ["run"]
    assert interrupted_run(workspace) is None


def test_a_cancelled_run_keeps_its_last_step_and_resumes(uninterrupted, tmp_path):
    workspace = _curated(tmp_path / "ws")
    process = _start(workspace, stdout=subprocess.PIPE)
    _wait_for_checkpoint(workspace, process)
    for line in process.stdout:   # cancel between two checkpoints: at an odd step
        event = parse_event(line)
        if event and event["event"] == "step" and event["step"] % 2 and event["step"] > 2:
            process.send_signal(signal.SIGTERM)   # what the app's ctrl+b sends
            break
    rest, stderr = process.stdout.read(), process.stderr.read()   # the buffered lines too
    process.wait(120)
    events = _events(rest)
    assert process.returncode == 130, stderr
    assert events[-1]["event"] == "cancelled", stderr
    message = events[-1]["message"]
    assert "nothing was published" in message and "sftchat train --resume" in message
    last_step = max([event["step"]] + [e["step"] for e in events if e["event"] == "step"])
    interrupted = interrupted_run(workspace)
    assert interrupted is not None and interrupted.step == last_step   # nothing done is lost
    assert not (workspace / "adapters" / "run").exists()

    ok(sftchat(workspace, "train", "--resume", timeout=600))
    _assert_same_run(workspace, uninterrupted)
    assert sorted(p.name for p in (workspace / "adapters").iterdir()) == ["run"]


def test_resume_refusals_are_one_clear_line(killed, tmp_path):
    empty = _curated(tmp_path / "empty")
    assert_one_line_error(sftchat(empty, "train", "--resume", in_process=True),
                          "nothing to resume", "sftchat train")
    conflict = sftchat(empty, "train", "--resume", "--lr", "1e-3", "--no-early-stop",
                       in_process=True)
    assert_one_line_error(conflict, "--resume", "takes no", "--lr", "--no-early-stop")
    assert parse_train_options("--resume") == ["--resume"]
    with pytest.raises(TrainOptionsError, match="takes no --name"):
        parse_train_options("--resume --name other")

    workspace = _copy(killed, tmp_path)
    other = assert_one_line_error(
        sftchat(workspace, "--model", str(tmp_path / "another-model"), "train", "--resume",
                in_process=True), "was trained on base model 'builtin'")
    assert "--model builtin" in other
    assert interrupted_run(workspace) is not None   # refused, and kept


def _step_dir(workspace: Path) -> Path:
    step = interrupted_run(workspace).step
    return checkpoint_dir(workspace / "adapters", "run") / f"step-{step:06d}"


@pytest.mark.parametrize("damage", ["truncated weights", "garbage optimizer state"])
def test_a_damaged_checkpoint_is_one_clear_line(killed, tmp_path, damage):
    """Found from the checkpoint's own sizes and checksums, before the model loads."""
    workspace = _copy(killed, tmp_path)
    if damage == "truncated weights":
        broken = _step_dir(workspace) / "adapter_model.safetensors"
        broken.write_bytes(broken.read_bytes()[:100])
    else:
        broken = _step_dir(workspace) / "optimizer.pt"
        broken.write_bytes(b"\0" * broken.stat().st_size)
    line = assert_one_line_error(sftchat(workspace, "train", "--resume", in_process=True),
                                 "incomplete or damaged", broken.name, "delete")
    assert str(checkpoint_dir(workspace / "adapters", "run")) in line
    assert not (workspace / "adapters" / "run").exists()


def test_a_new_run_replaces_the_interrupted_one_only_with_its_own_checkpoint(killed,
                                                                            tmp_path):
    """The clean-up of a run's start leaves a resumable checkpoint alone; a run that never
    checkpoints leaves it resumable; the first checkpoint of a newer run replaces it."""
    workspace = _copy(killed, tmp_path)
    adapters = workspace / "adapters"
    sftchat(workspace, "train", "--name", "quick", "--max-steps", "1", "--checkpoint-every",
            "0", check=True, in_process=True)
    assert interrupted_run(workspace).name == "run"
    sftchat(workspace, "train", "--name", "newer", "--max-steps", "2", "--checkpoint-every",
            "1", check=True, in_process=True)
    assert interrupted_run(workspace) is None
    assert sorted(p.name for p in adapters.iterdir()) == ["newer", "quick"]


def test_checkpoint_every_is_validated(ws):
    from sftchat.config import ConfigError, load_settings

    assert load_settings(workspace=str(ws)).training.checkpoint_every == "auto"
    for bad in ("-1", '"often"', "true"):
        (ws / "sftchat.toml").write_text(f"[training]\ncheckpoint_every = {bad}\n")
        with pytest.raises(ConfigError, match="checkpoint_every"):
            load_settings(workspace=str(ws))
    (ws / "sftchat.toml").write_text("[training]\ncheckpoint_every = 0\n")
    assert load_settings(workspace=str(ws)).training.checkpoint_every == 0
