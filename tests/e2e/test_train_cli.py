"""`sftchat train`: JSON events and cancel by signal through a real process; failures,
refusals and options in-process (the same command line, without starting Python and PyTorch
again for each run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from cli_helpers import cli_command, sftchat
from sftchat.training.events import parse_event


def _add(workspace, instruction, response):
    sftchat(workspace, "data", "add", "--instruction", instruction, "--response", response,
            check=True, in_process=True)


def test_json_events_from_start_to_finish(tmp_path):
    _add(tmp_path, "Ping?", "Pong.")
    result = sftchat(tmp_path, "train", "--json", "--name", "quick", "--max-steps", "3", check=True)
    events = [parse_event(line) for line in result.stdout.splitlines()]
    assert all(events), f"non-event line on stdout: {result.stdout!r}"
    kinds = [event["event"] for event in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    steps = [event for event in events if event["event"] == "step"]
    assert [event["step"] for event in steps] == [1, 2, 3]
    for event in steps:
        assert event["total_steps"] == 3
        for key in ("loss", "lr", "tokens_per_s", "eta_s", "epoch", "grad_norm"):
            assert isinstance(event[key], (int, float)), key
    assert events[-1]["adapter"] == str(tmp_path.resolve() / "adapters" / "quick")
    assert (tmp_path / "adapters" / "quick" / "adapter_model.safetensors").is_file()


def test_sigterm_stops_cleanly_and_publishes_nothing(tmp_path):
    _add(tmp_path, "Ping?", "Pong.")
    process = subprocess.Popen(
        cli_command(tmp_path, "train", "--json", "--name", "stopped", "--max-steps", "100000",
                    "--no-early-stop"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = []
    for line in process.stdout:
        events.append(parse_event(line))
        if events[-1]["event"] == "step":
            process.send_signal(signal.SIGTERM)
            break
    rest, stderr = process.communicate(timeout=120)
    events += [parse_event(line) for line in rest.splitlines()]
    assert process.returncode == 130, stderr
    assert events[-1]["event"] == "cancelled"
    assert "nothing was published" in events[-1]["message"]
    assert "Traceback" not in stderr
    assert os.listdir(tmp_path / "adapters") == []


def test_empty_dataset_is_one_clear_error(tmp_path):
    result = sftchat(tmp_path, "train", "--json", in_process=True)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "dataset is empty" in result.stderr
    assert "Traceback" not in result.stderr
    (event,) = [parse_event(line) for line in result.stdout.splitlines()]
    assert event["event"] == "failed" and "sftchat data add" in event["message"]
    assert os.listdir(tmp_path / "adapters") == []


def test_leftovers_of_a_killed_run_are_cleaned_by_the_next(tmp_path):
    _add(tmp_path, "Ping?", "Pong.")
    stale = tmp_path / "adapters" / ".staging-dead-999999"
    stale.mkdir(parents=True)
    (stale / "adapter_model.safetensors").write_bytes(b"half")
    sftchat(tmp_path, "train", "--name", "after", "--max-steps", "2", check=True, in_process=True)
    assert sorted(os.listdir(tmp_path / "adapters")) == ["after"]


def test_existing_name_and_bad_values_are_refused(tmp_path):
    _add(tmp_path, "Ping?", "Pong.")
    sftchat(tmp_path, "train", "--name", "taken", "--max-steps", "1", check=True, in_process=True)
    again = sftchat(tmp_path, "train", "--name", "taken", "--max-steps", "1", in_process=True)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = sftchat(tmp_path, "train", "--lr", "-1", in_process=True)
    assert bad.returncode == 1 and "lr must be positive" in bad.stderr
    escape = sftchat(tmp_path, "train", "--name", "../outside", in_process=True)
    assert escape.returncode == 1 and "invalid adapter name" in escape.stderr
    assert not (tmp_path / "outside").exists()


def test_continue_from_an_adapter(tmp_path):
    _add(tmp_path, "Ping?", "Pong.")
    sftchat(tmp_path, "train", "--name", "one", "--max-steps", "2", check=True, in_process=True)
    sftchat(tmp_path, "train", "--name", "two", "--from", "one", "--max-steps", "2", check=True, in_process=True)
    meta = json.loads((tmp_path / "adapters" / "two" / "sftchat.json").read_text())
    assert meta["from_adapter"] == "one"


def test_an_example_too_long_is_skipped_with_a_notice_or_refused_with_strict(tmp_path):
    """Issue 11, defect 5: one long answer no longer refuses the whole run."""
    _add(tmp_path, "Ping?", "Pong.")
    _add(tmp_path, "Write a lot.", "word " * 1500)   # its answer alone exceeds max length
    _add(tmp_path, "Pong?", "Ping.")
    result = sftchat(tmp_path, "train", "--json", "--name", "kept", "--max-steps", "2",
                     "--max-length", "256", check=True, in_process=True)
    started = parse_event(result.stdout.splitlines()[0])
    assert started["skipped_too_long"] == [2] and started["examples"] == 2
    meta = json.loads((tmp_path / "adapters" / "kept" / "sftchat.json").read_text())
    assert meta["dataset"]["example_ids"] == [1, 3]
    assert meta["dataset"]["skipped_too_long"] == [2]
    text = sftchat(tmp_path, "train", "--name", "kept2", "--max-steps", "1",
                   "--max-length", "256", check=True, in_process=True)
    assert "skipped 1 example whose answer alone is longer than max length 256 (ids 2)" \
        in text.stderr
    strict = sftchat(tmp_path, "train", "--strict", "--max-length", "256", in_process=True)
    assert strict.returncode == 1
    assert "example 2: the response is" in strict.stderr and "--strict" in strict.stderr
    assert strict.stderr.count("\n") == 1


def test_a_diverging_run_fails_and_publishes_nothing(tmp_path):
    """Issue 18: a run that wrecks the model (here an absurd learning rate) ends as a failed
    run with one line saying what happened and what to try, and publishes nothing."""
    for instruction, response in [("Ping?", "Pong."), ("Ding?", "Dong."),
                                  ("What is the capital of France?", "Paris.")]:
        _add(tmp_path, instruction, response)
    result = sftchat(tmp_path, "train", "--json", "--lr", "50", "--no-early-stop",
                     "--max-steps", "40", in_process=True)
    assert result.returncode == 1
    events = [parse_event(line) for line in result.stdout.splitlines()]
    kinds = [event["event"] for event in events]
    assert kinds[0] == "started" and kinds[-1] == "failed" and "finished" not in kinds
    message = events[-1]["message"]
    assert "diverged" in message and "nothing was published" in message and "--lr" in message
    assert kinds.count("step") < 40   # stopped as soon as it showed, not at the last step
    assert message in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(tmp_path / "adapters") == []
