"""Data-parallel training through torchrun (issue 13): `sftchat train --nproc 2` on CPU
(gloo) trains the adapter one process trains, publishes it once, fails cleanly when a rank
dies and stops every rank on a cancel; two "machines" (two launchers on this one, meeting
at a rendezvous endpoint) do the same with the dataset on machine 0 only.

All real: the built-in model, the real launcher, torchrun's elastic agent and its worker
processes. The one-process reference runs in-process (its real-process path is covered by
every other training test).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from cli_helpers import cli_command, clean_env, sftchat
from conftest import CURATED
from sftchat.dataset.store import ExampleStore
from sftchat.training.events import EXIT_CANCELLED, parse_event

# Five examples in steps of 2 × 2: every other step holds one example, so with two ranks one
# of them has no curated example in that step (it joins the gradient sum with zeros).
RECIPE = ("--batch-size", "2", "--grad-accum", "2", "--max-steps", "6", "--no-early-stop",
          "--max-length", "128")


@pytest.fixture(scope="module", autouse=True)
def float32_compute():
    """Every process of this module computes in float32, whatever this CPU would take: the
    ranks' sum must equal one process's to float32's precision (bfloat16's 8-bit mantissa
    turns another order of additions into 1e-3 of the loss: measured on an AVX512-BF16 CPU).
    Set in the environment, so the launched ranks inherit it."""
    from sftchat.models.loader import CPU_DTYPE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CPU_DTYPE_ENV, "float32")
        yield


def _curated(workspace: Path) -> Path:
    with ExampleStore(workspace / "data") as store:
        for instruction, response in CURATED:
            store.add(instruction, response)
        # Rejected answers (issue 21): a DPO pair and a bad answer with no replacement, one
        # a step, so the rank that gets none joins the gradient sum without a preference pass.
        store.add_rejected(CURATED[1][0], "Not this one.", source="cli", example_id=2)
        store.add_rejected("Tell me a joke.", "I have no jokes today.")
    return workspace


def _visible(workspace: Path) -> list[str]:
    return sorted(p.name for p in (workspace / "adapters").iterdir())


def _events(stdout: str) -> list[dict]:
    return [event for event in map(parse_event, stdout.splitlines()) if event]


def _weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def _metrics(adapter: Path) -> dict:
    return json.loads((adapter / "sftchat.json").read_text(encoding="utf-8"))["metrics"]


def _assert_same_adapter(reference: Path, candidate: Path) -> None:
    """The same loss curve and LoRA weights, within float tolerance. The ranks add their
    gradients in another order than one process does, and AdamW's first steps move every
    weight by about the learning rate whatever its gradient's size, so a weight whose
    gradient is nearly 0 can move either way: compared tensor by tensor, the difference is
    tiny (measured: 5e-5 of the tensor's norm), element by element it can reach a few tenths
    of a percent of the tensor's largest weight."""
    expected, got = _metrics(reference), _metrics(candidate)
    assert got["loss_curve"] == pytest.approx(expected["loss_curve"], rel=1e-4)
    assert got["stopped_early"] == expected["stopped_early"]
    assert got["preferences"]["rejected"] == expected["preferences"]["rejected"] == 2
    assert got["preferences"]["mean_margin"] == pytest.approx(
        expected["preferences"]["mean_margin"], rel=1e-3)
    one, two = _weights(reference), _weights(candidate)
    assert one.keys() == two.keys()
    for key in one:
        difference = one[key] - two[key]
        assert float(difference.norm()) <= 1e-3 * float(one[key].norm()) + 1e-9, key
        assert float(difference.abs().max()) <= 5e-2 * float(one[key].abs().max()) + 1e-9, key
    # Training moved the weights far more than the tolerance (the check can fail).
    moved = max(float(w.abs().max()) for k, w in one.items() if "lora_B" in k)
    assert moved > 1e-2


@pytest.fixture(scope="module")
def reference(tmp_path_factory, builtin_cache):
    """One process, in-process: (workspace, {regularize: adapter folder})."""
    workspace = _curated(tmp_path_factory.mktemp("one") / "ws")
    adapters = {}
    for regularize in ("off", "rehearsal"):
        name = f"one-{regularize}"
        sftchat(workspace, "train", "--name", name, "--regularize", regularize, *RECIPE,
                check=True, in_process=True)
        adapters[regularize] = workspace / "adapters" / name
    return adapters


def test_two_gloo_ranks_train_the_adapter_one_process_trains(ws, reference):
    """Without rehearsal, so that a step whose one example goes to rank 0 leaves rank 1
    nothing to compute (the two-machine test below shares the rehearsal anchors)."""
    _curated(ws)
    result = sftchat(ws, "train", "--json", "--name", "two", "--nproc", "2", "--regularize",
                     "off", *RECIPE, timeout=300)
    assert result.returncode == 0, result.stderr
    events = _events(result.stdout)
    kinds = [event["event"] for event in events]
    # Rank 0 alone speaks: one start, a step event per step, one end.
    assert kinds.count("started") == 1 and kinds[-1] == "finished"
    assert kinds.count("step") == 6 and kinds.count("finished") == 1
    assert events[0]["ranks"] == 2
    assert _visible(ws) == ["two"]  # published once, no staging left behind
    adapter = ws / "adapters" / "two"
    assert _metrics(adapter)["ranks"] == 2
    meta = json.loads((adapter / "sftchat.json").read_text(encoding="utf-8"))
    assert meta["hyperparameters"]["nproc"] == 2
    _assert_same_adapter(reference["off"], adapter)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_machines_meet_at_the_endpoint_and_machine_0_publishes(tmp_path, reference):
    """Two launchers on this machine stand for two machines: --nnodes 2, each --nproc 1.
    Machine 1's workspace has no dataset and its command no training options: rank 0 sends
    the snapshot and the settings."""
    machine0 = _curated(tmp_path / "machine0")
    machine1 = tmp_path / "machine1"
    machine1.mkdir()
    endpoint = f"127.0.0.1:{_free_port()}"
    meet = ("--nnodes", "2", "--rdzv-endpoint", endpoint)
    # Machine 1 gives no training options: machine 0's decide the run.
    second = subprocess.Popen(cli_command(machine1, "train", "--json", *meet, "--node-rank",
                                          "1"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=clean_env())
    first = sftchat(machine0, "train", "--json", "--name", "across", "--regularize",
                    "rehearsal", *RECIPE, *meet, "--node-rank", "0", timeout=300)
    out1, err1 = second.communicate(timeout=120)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, err1
    assert "machine 0 evaluates and publishes" in err1
    assert _events(out1) == []  # only rank 0 writes events
    assert [e["event"] for e in _events(first.stdout)][-1] == "finished"
    assert _visible(machine0) == ["across"]
    assert not (machine1 / "adapters").exists() or _visible(machine1) == []
    _assert_same_adapter(reference["rehearsal"], machine0 / "adapters" / "across")


def _start(workspace: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command(workspace, "train", "--json", "--nproc", "2", "--max-steps", "100000",
                    "--no-early-stop", *extra),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())


def _wait_for_step(process: subprocess.Popen) -> list[dict]:
    events = []
    for line in process.stdout:
        event = parse_event(line)
        if event:
            events.append(event)
            if event["event"] == "step":
                return events
    raise AssertionError(f"no step: {process.stderr.read()}")


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The worker process torchrun started as `rank` (a child of the launcher)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text()
        for pid in map(int, children.split()):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank}")


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status


def test_a_rank_killed_with_9_fails_the_run_with_one_message_and_publishes_nothing(ws):
    _curated(ws)
    launcher = _start(ws, "--name", "doomed")
    _wait_for_step(launcher)
    os.kill(_rank_pid(launcher, 1), signal.SIGKILL)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 1
    terminal = [e for e in _events(out) if e["event"] in ("finished", "cancelled", "failed")]
    assert len(terminal) == 1 and terminal[0]["event"] == "failed"
    assert terminal[0]["message"].startswith("training rank 1 was killed by SIGKILL; "
                                             "nothing was published")
    assert err.strip().splitlines()[-1] == f"sftchat: error: {terminal[0]['message']}"
    assert "Traceback" not in err
    assert _visible(ws) == []  # rank 0 removed its staging folder too


def test_a_cancel_stops_every_rank_and_publishes_nothing(ws):
    _curated(ws)
    launcher = _start(ws, "--name", "stopped")
    _wait_for_step(launcher)
    workers = [_rank_pid(launcher, rank) for rank in (0, 1)]
    launcher.send_signal(signal.SIGTERM)  # what the app's ctrl+b sends
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == EXIT_CANCELLED
    terminal = [e for e in _events(out) if e["event"] in ("finished", "cancelled", "failed")]
    assert [e["event"] for e in terminal] == ["cancelled"]
    assert "nothing was published" in terminal[0]["message"]
    assert _visible(ws) == []
    assert not any(_alive(pid) for pid in workers)  # every rank has exited
    assert "Traceback" not in err

