"""`--nproc` and the multi-machine flags: the setting, the torchrun arguments they become,
how a rank's share of a step is dealt, and how the launcher words a run's end from what the
ranks reported and what torchrun's agent saw (the processes themselves are tested in
tests/e2e/test_distributed.py)."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from cli_helpers import sftchat
from sftchat.config import ConfigError, TrainingSettings, load_settings, validate_training
from sftchat.training.distributed import LaunchPlan, Ranks, _outcome, check_plan, resolve_nproc
from sftchat.training.events import EXIT_CANCELLED, describe
from sftchat.training.options import parse_train_options
from sftchat.training.errors import TrainingError


def test_nproc_is_a_setting_a_flag_and_a_slash_train_option(tmp_path):
    (tmp_path / "sftchat.toml").write_text('[training]\nnproc = "auto"\n')
    assert load_settings(workspace=str(tmp_path)).training.nproc == "auto"
    assert parse_train_options("--nproc 2") == ["--nproc", "2"]
    for bad in ("two", "1.5"):
        with pytest.raises(Exception, match="whole number or 'auto'"):
            parse_train_options(f"--nproc {bad}")
    with pytest.raises(ConfigError, match="nproc must be positive"):
        validate_training(TrainingSettings(nproc=0))
    (tmp_path / "sftchat.toml").write_text('[training]\nnproc = "many"\n')
    with pytest.raises(ConfigError, match="nproc must be a positive number or \"auto\""):
        load_settings(workspace=str(tmp_path))


def test_auto_is_one_process_per_visible_gpu_and_one_on_cpu(monkeypatch):
    import torch

    assert resolve_nproc(3, "cpu") == 3
    assert resolve_nproc("auto", "cpu") == 1
    # No GPU here: what torch would report on a machine with four (the only fake).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_nproc("auto", "auto") == 4
    assert resolve_nproc("auto", "cpu") == 1


def test_the_plan_becomes_torchruns_arguments():
    assert not LaunchPlan(1).launches
    single = LaunchPlan(4)
    assert single.launches
    assert single.torchrun_arguments() == [
        "--nproc-per-node", "4", "--nnodes", "1", "--max-restarts", "0", "--monitor-interval",
        "0.5", "--standalone", "-m", "sftchat.cli"]
    machines = LaunchPlan(8, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29500")
    assert machines.launches and LaunchPlan(1, nnodes=2, rdzv_endpoint="h:1").launches
    arguments = machines.torchrun_arguments()
    assert arguments[arguments.index("--node-rank") + 1] == "1"
    assert arguments[arguments.index("--rdzv-endpoint") + 1] == "10.0.0.1:29500"
    assert "--standalone" not in arguments
    # torchrun's own parser reads them as it would on its command line.
    from torch.distributed.run import parse_args

    parsed = parse_args(arguments)
    assert (parsed.nproc_per_node, parsed.nnodes, parsed.node_rank) == ("8", "2", 1)
    assert parsed.rdzv_backend == "static" and parsed.module


@pytest.mark.parametrize("plan, message", [
    (LaunchPlan(0), "--nproc must be 1 or more"),
    (LaunchPlan(1, nnodes=2), "give --rdzv-endpoint HOST:PORT"),
    (LaunchPlan(1, nnodes=2, rdzv_endpoint="hostonly"), "give --rdzv-endpoint HOST:PORT"),
    (LaunchPlan(1, nnodes=2, node_rank=2, rdzv_endpoint="h:1"), "from 0 to 1, not 2"),
])
def test_a_plan_that_cannot_run_is_refused_before_anything_starts(plan, message):
    with pytest.raises(TrainingError, match=message):
        check_plan(plan)


def test_more_processes_than_gpus_is_refused(monkeypatch):
    import torch

    # No GPU here: what torch would report on a machine with two (the only fake).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(TrainingError, match="--nproc 4 needs one GPU per process, but 2 are "
                                            "visible"):
        check_plan(LaunchPlan(4), "auto")
    check_plan(LaunchPlan(2), "auto")
    check_plan(LaunchPlan(4), "cpu")  # gloo on the CPU: any number


def test_the_multi_machine_flags_are_in_train_help():
    help_text = sftchat(None, "train", "--help", in_process=True).stdout
    for flag in ("--nproc N|auto", "--nnodes K", "--node-rank I", "--rdzv-endpoint HOST:PORT"):
        assert flag in help_text


def test_a_steps_examples_are_dealt_longest_first_in_micro_batches_of_the_batch_size():
    lengths = [10, 50, 20, 40, 30, 60, 5]
    step = [[0, 1], [2, 3], [4, 5], [6]]
    alone = Ranks()
    assert alone.share(step, lengths, 2) == step  # one process: the plan as it is
    shares = [Ranks(rank, 2, rank).share(step, lengths, 2) for rank in (0, 1)]
    assert shares == [[[5, 3], [2, 6]], [[1, 4], [0]]]  # 60 40 20 5 | 50 30 10 tokens
    dealt = sorted(i for share in shares for batch in share for i in batch)
    assert dealt == list(range(7))  # every example once: the effective batch is unchanged
    assert [Ranks(rank, 3, 0).deal([0, 1, 2, 3]) for rank in range(3)] == [[0, 3], [1], [2]]


def _failure(code):
    return SimpleNamespace(exitcode=code)


def test_the_launcher_names_how_a_run_ended():
    plan = LaunchPlan(2)
    # Rank 0 said it all (its event is out): nothing to add.
    done = _outcome(plan, {0: {"rank": 0, "outcome": "finished", "message": "", "emitted": True},
                           1: {"rank": 1, "outcome": "finished", "message": "",
                               "emitted": False}}, {}, None)
    assert (done.exit_code, done.message) == (0, None)
    # A rank killed without a word; rank 0 only saw its peer go.
    lost = {0: {"rank": 0, "outcome": "peer_lost", "message": "gloo: reset", "emitted": False}}
    killed = _outcome(plan, lost, {0: _failure(1), 1: _failure(-signal.SIGKILL)}, None)
    assert killed.exit_code == 1
    assert killed.message.startswith("training rank 1 was killed by SIGKILL; nothing was "
                                     "published (if the machine ran out of memory")
    # A rank that failed on its own and said why.
    own = {**lost, 1: {"rank": 1, "outcome": "failed", "message": "CUDA ran out of memory",
                       "emitted": False}}
    assert _outcome(plan, own, {}, None).message == \
        "rank 1: CUDA ran out of memory; nothing was published"
    # A signal to the launcher before rank 0 could say so.
    cancelled = _outcome(plan, {}, {}, signal.SIGTERM)
    assert (cancelled.exit_code, cancelled.outcome) == (EXIT_CANCELLED, "cancelled")
    # Machine 1 of 2: its ranks are done; machine 0 publishes.
    other = LaunchPlan(1, nnodes=2, node_rank=1, rdzv_endpoint="h:1")
    finished = _outcome(other, {1: {"rank": 1, "outcome": "finished", "message": "",
                                    "emitted": False}}, {}, None)
    assert finished.exit_code == 0 and "machine 0 evaluates and publishes" in finished.message
    failed = _outcome(other, {1: {"rank": 1, "outcome": "peer_lost", "message": "",
                                  "emitted": False}}, {}, None)
    assert failed.exit_code == 1 and "failed on another machine (see machine 0)" in \
        failed.message


def test_the_started_line_says_how_many_processes():
    event = {"event": "started", "name": "a", "examples": 3, "total_steps": 9,
             "device": "cpu", "ranks": 2}
    assert describe(event).endswith("up to 9 steps on 2 processes on cpu")
    assert describe({**event, "device": "cuda", "ranks": 4}).endswith("on 4 GPUs")
    assert describe({**event, "ranks": 1}).endswith("on cpu")


def test_a_rank_on_another_base_model_is_refused_before_the_first_step():
    from sftchat.training.trainer import _same_base

    loaded = SimpleNamespace(identity={"model": "other/model", "fingerprint": "b" * 64})
    _same_base(SimpleNamespace(identity={"model": "x", "fingerprint": "a" * 64}), "a" * 64)
    with pytest.raises(TrainingError, match="loaded 'other/model', which is not the base "
                                            "model rank 0 loaded; give every machine the "
                                            "same --model"):
        _same_base(loaded, "a" * 64)


def test_a_rank_whose_launcher_is_killed_is_told_to_stop(tmp_path):
    """SIGKILL cannot be passed on by torchrun's agent: each rank watches its parent and sets
    its stop flag when the parent is gone (the ranks then stop together at the step's end,
    as after a cancel: tests/e2e/test_distributed.py). A launcher and a rank stand-in, real
    processes, without torch."""
    import subprocess
    import sys
    import time

    marker = tmp_path / "rank.txt"
    rank = ("import os, sys, threading\n"
            "from sftchat.training.distributed import stop_when_orphaned\n"
            "def say(text):  # atomically: the test never reads a half-written file\n"
            "    open(sys.argv[1] + '.tmp', 'w').write(text)\n"
            "    os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
            "stop = threading.Event()\n"
            "stop_when_orphaned(stop, interval=0.05)\n"
            "say('watching')\n"
            "say('stopped' if stop.wait(30) else 'never told')\n")
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]])\n"
         "time.sleep(60)\n", rank, str(marker)])
    try:
        deadline = time.monotonic() + 30
        while (not marker.exists() or marker.read_text() != "watching") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "watching"
        launcher.kill()
        launcher.wait(10)
        while marker.read_text() == "watching" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "stopped"
    finally:
        launcher.kill()
