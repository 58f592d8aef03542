"""Data-parallel training across processes and machines, on PyTorch's own engine.

`sftchat train --nproc N` (or `--nnodes K --node-rank I --rdzv-endpoint HOST:PORT`) does not
train itself: `launch` runs the same command again under `torch.distributed.run` (what
`torchrun` runs: its elastic agent starts N workers on this machine and meets the other
machines at the rendezvous). Each worker is `sftchat train` once more; it finds torchrun's
environment (`Ranks.from_environment`) and trains as one rank of the run:

- Rank 0 owns the workspace: it takes the training lock, snapshots the dataset, writes the
  events, evaluates and publishes. The snapshot and the base model's anchor answers are
  broadcast to the other ranks, so every rank trains on exactly what rank 0 read, and a second
  machine needs the model but no copy of the dataset.
- Every rank plans the same optimizer steps. A step's examples are dealt out to the ranks,
  longest first (`Ranks.share`), and each rank runs its share in micro-batches of at most the
  batch size: the effective batch and the schedule are those of one process.
- `DataParallel` wraps the LoRA model in DDP (`find_unused_parameters=False`): gradients
  accumulate without communication (`no_sync`) until each rank's last backward of the step,
  which sums them across ranks. Summed, not averaged: the loss is already divided by the
  step's learned tokens over all ranks, so the sum is exactly one process's gradient.
- One small all-reduce per step (`Ranks.sum`) carries the step's loss and tokens, which
  examples are reproduced, and whether any rank was asked to stop: a cancel stops every rank
  at the same step boundary and nothing is published.

A rank that fails writes why into the launcher's report folder (`report_outcome`); when a
rank dies without a word (killed, out of memory), the launcher names it from the elastic
agent's record. Either way the launcher ends the run with exactly one terminal event.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sftchat.training.errors import TrainingError
from sftchat.training.events import EXIT_CANCELLED

# Where workers write how they ended (set by `launch` for its workers).
REPORTS_ENV = "SFTCHAT_RANK_REPORTS"
# How long a rank waits for the others at a collective before giving up: longer than a big
# model takes to load on the slowest machine.
COLLECTIVE_TIMEOUT = dt.timedelta(minutes=30)


# --------------------------------------------------------------------------- one rank


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank 0 of 1 when training alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls) -> "Ranks | None":
        """The rank torchrun started this process as, or None when it did not."""
        try:
            return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                       int(os.environ["LOCAL_RANK"]))
        except (KeyError, ValueError):
            return None

    def start(self, device: str) -> None:
        """Join the run's process group (gloo on CPU, nccl on CUDA, one GPU per local rank)."""
        import torch
        import torch.distributed as dist

        if device == "cuda":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                timeout=COLLECTIVE_TIMEOUT)

    def finish(self) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    def _device(self):
        import torch
        import torch.distributed as dist

        return torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")

    def broadcast(self, value):
        """Rank 0's `value` on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks (float64)."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(list(values), dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor)
        return tensor.cpu().tolist()

    def share(self, micro_batches: Sequence[Sequence[int]], lengths: Sequence[int],
              batch_size: int) -> list[list[int]]:
        """This rank's micro-batches of one optimizer step (indices into the examples).

        Alone: the step's own micro-batches. Otherwise the step's examples, longest first, are
        dealt round the ranks (so each gets about the same tokens) and cut into micro-batches
        of at most `batch_size`."""
        if not self.distributed:
            return [list(batch) for batch in micro_batches]
        examples = sorted((i for batch in micro_batches for i in batch),
                          key=lambda i: -lengths[i])
        mine = self.deal(examples)
        return [mine[start:start + batch_size] for start in range(0, len(mine), batch_size)]

    def deal(self, items: Sequence) -> list:
        """This rank's part of `items` (every rank gets a different part; alone: all)."""
        return list(items[self.rank::self.world_size])


SINGLE = Ranks()


def stop_when_orphaned(stop, interval: float = 1.0) -> None:
    """Set `stop` if this rank's launcher dies (killed with SIGKILL, it cannot pass a cancel
    on): the ranks then stop together at the step's end, publishing nothing. A daemon thread."""
    import threading

    launcher = os.getppid()

    def watch() -> None:
        while not stop.wait(interval):
            if os.getppid() != launcher:
                stop.set()

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def is_peer_failure(exc: BaseException) -> bool:
    """Whether `exc` is a collective (a broadcast, an all-reduce, DDP's gradient sum in a
    backward) failing because another rank is gone: that rank, or the launcher, says why."""
    try:
        from torch.distributed import DistError
    except ImportError:  # pragma: no cover - torch without distributed support
        DistError = ()  # noqa: N806
    text = str(exc)
    return isinstance(exc, DistError) or any(
        marker in text for marker in ("gloo", "NCCL", "Connection reset", "Connection closed"))


# --------------------------------------------------------------------------- gradients


class DataParallel:
    """The training forward of one rank, with gradients summed over the ranks by DDP.

    `learned_logits(examples)` is `LossFunction.learned_logits`, through DDP when there are
    several ranks. Run each backward of a step inside `backward_pass(last)`: only the last one
    communicates. A rank with nothing to compute in a step still calls `join_empty()`, so
    every rank takes part in the step's gradient sum."""

    def __init__(self, loss_function, ranks: Ranks) -> None:
        self.loss_function = loss_function
        self.ddp = None
        if not ranks.distributed:
            return
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        module = _learned_logits_module(loss_function)
        # Every rank starts from rank 0's LoRA weights (fresh from the same seed, or read
        # --from an adapter that only rank 0's machine may hold). The frozen 4-bit base is
        # the same file on every rank and is not sent.
        for parameter in module.trainable:
            dist.broadcast(parameter.data, src=0)
        device = loss_function.model.device
        self.ddp = DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False, init_sync=False, **_no_buffer_sync())
        self.ddp.register_comm_hook(None, _sum_gradients)

    def learned_logits(self, examples):
        if self.ddp is None:
            return self.loss_function.learned_logits(examples)
        return self.ddp(list(examples))

    @contextlib.contextmanager
    def backward_pass(self, last: bool):
        if self.ddp is None or last:
            yield
        else:
            with self.ddp.no_sync():
                yield

    def join_empty(self) -> None:
        """This rank has no examples in this step: add zero to every gradient, in sync."""
        if self.ddp is None:
            return
        with self.backward_pass(last=True):
            self.ddp(None).backward()


def _no_buffer_sync() -> dict:
    """DDP's option not to broadcast buffers before each forward (rotary tables, quantization
    state: the same on every rank), by the name this PyTorch knows: `forward_sync_buffers`
    since 2.13 (where `broadcast_buffers` is deprecated), `broadcast_buffers` before."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    known = inspect.signature(DistributedDataParallel.__init__).parameters
    name = "forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"
    return {name: False}


def _sum_gradients(process_group, bucket):
    """DDP communication hook: all-reduce SUM (DDP's default divides by the world size)."""
    import torch.distributed as dist

    future = dist.all_reduce(bucket.buffer(), group=process_group, async_op=True).get_future()
    return future.then(lambda done: done.value()[0])


def _learned_logits_module(loss_function):
    """The learned-logits forward as a module holding the model, so DDP can wrap it."""
    import torch

    class LearnedLogitsModule(torch.nn.Module):
        def __init__(self, loss_function) -> None:
            super().__init__()
            self.model = loss_function.model
            self.loss_function = loss_function
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]

        def forward(self, examples):
            if examples is None:  # zero times every trainable weight: a gradient of zeros
                return sum(parameter.sum() for parameter in self.trainable) * 0.0
            return self.loss_function.learned_logits(examples)

    return LearnedLogitsModule(loss_function)


# --------------------------------------------------------------------------- reports


def report_outcome(ranks: Ranks, outcome: str, message: str = "", emitted: bool = False) -> None:
    """Tell the launcher how this rank ended: finished, cancelled, failed or peer_lost
    (`emitted`: rank 0 already wrote the run's terminal event)."""
    folder = os.environ.get(REPORTS_ENV)
    if not folder:
        return
    record = {"rank": ranks.rank, "outcome": outcome, "message": message, "emitted": emitted}
    path = Path(folder) / f"rank-{ranks.rank}.json"
    try:
        path.write_text(json.dumps(record), encoding="utf-8")
    except OSError:
        pass  # the launcher falls back to the elastic agent's record


def _read_reports(folder: Path) -> dict[int, dict]:
    reports = {}
    for path in folder.glob("rank-*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            reports[int(record["rank"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return reports


# --------------------------------------------------------------------------- launching


@dataclass(frozen=True)
class LaunchPlan:
    """How many processes, on how many machines (torchrun's vocabulary)."""

    nproc: int                        # processes on this machine
    nnodes: int = 1                   # machines
    node_rank: int = 0                # this machine's place (0: the one that publishes)
    rdzv_endpoint: str | None = None  # HOST:PORT of machine 0, for several machines

    @property
    def launches(self) -> bool:
        """Whether training needs torchrun (otherwise it runs in this process)."""
        return self.nproc > 1 or self.nnodes > 1

    def torchrun_arguments(self) -> list[str]:
        """`torchrun` arguments that run `python -m sftchat.cli` as every rank (the worker's
        own arguments are added after parsing, where torchrun's parser cannot mistake
        `--nproc` for an abbreviation of its `--nproc-per-node`)."""
        args = ["--nproc-per-node", str(self.nproc), "--nnodes", str(self.nnodes),
                "--max-restarts", "0", "--monitor-interval", "0.5"]
        if self.nnodes > 1:
            # Static rendezvous: machine `node_rank` of `nnodes`, meeting at machine 0.
            args += ["--node-rank", str(self.node_rank), "--rdzv-endpoint",
                     self.rdzv_endpoint or "", "--rdzv-id", "sftchat"]
        else:
            args += ["--standalone"]
        return [*args, "-m", "sftchat.cli"]


def resolve_nproc(value: int | str, device: str) -> int:
    """`nproc` as a number: `auto` is one per visible GPU (unless the device is cpu), else 1."""
    if value != "auto":
        return int(value)
    if device == "cpu":
        return 1
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def check_plan(plan: LaunchPlan, device: str = "cpu") -> None:
    """Refuse, in one sentence, a plan that cannot run (before anything starts); `device` is
    the setting (auto, cpu or cuda)."""
    if plan.nproc < 1:
        raise TrainingError(f"--nproc must be 1 or more, not {plan.nproc}")
    if device != "cpu" and plan.nproc > 1:
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if visible and plan.nproc > visible:
            raise TrainingError(
                f"--nproc {plan.nproc} needs one GPU per process, but {visible} "
                f"{'is' if visible == 1 else 'are'} visible (CUDA_VISIBLE_DEVICES); use "
                f"--nproc {visible} or --nproc auto")
    if plan.nnodes < 1:
        raise TrainingError(f"--nnodes must be 1 or more, not {plan.nnodes}")
    if plan.nnodes > 1:
        if not plan.rdzv_endpoint or ":" not in plan.rdzv_endpoint:
            raise TrainingError("several machines meet at machine 0: give --rdzv-endpoint "
                                "HOST:PORT (machine 0's address and a free port)")
        if not 0 <= plan.node_rank < plan.nnodes:
            raise TrainingError(f"--node-rank must be from 0 to {plan.nnodes - 1}, "
                                f"not {plan.node_rank}")


@dataclass
class LaunchResult:
    exit_code: int
    outcome: str             # finished | cancelled | failed
    message: str | None      # None: rank 0 already reported the run's end itself


def _threads_per_rank(nproc: int, device: str) -> None:
    """Split this machine's cores between its ranks (torchrun would give each one thread)."""
    if device == "cuda":
        os.environ.setdefault("OMP_NUM_THREADS", "4")
        return
    cores = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // nproc))


def launch(plan: LaunchPlan, worker_arguments: Sequence[str], device: str) -> LaunchResult:
    """Run the workers under torch.distributed.run and say how the run ended.

    Blocks until every local worker has exited. SIGINT/SIGTERM reach the elastic agent, which
    passes them to the workers (they stop at the next step boundary, together)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # The agent's own progress lines are noise here: the run's events say what happens.
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run",
                            "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    _threads_per_rank(plan.nproc, device)
    with tempfile.TemporaryDirectory(prefix="sftchat-ranks-") as folder:
        os.environ[REPORTS_ENV] = folder
        failures: dict = {}
        signalled = None
        try:
            arguments = parse_args(plan.torchrun_arguments())
            arguments.training_script_args = list(worker_arguments)
            run(arguments)
        except ChildFailedError as exc:
            failures = exc.failures
        except SignalException as exc:
            signalled = exc.sigval
        finally:
            os.environ.pop(REPORTS_ENV, None)
        return _outcome(plan, _read_reports(Path(folder)), failures, signalled)


def _outcome(plan: LaunchPlan, reports: dict[int, dict], failures: dict,
             signalled) -> LaunchResult:
    """The run's end, from what the ranks reported and what the agent saw."""
    main = reports.get(0)
    if main and main["outcome"] != "peer_lost":
        code = {"finished": 0, "cancelled": EXIT_CANCELLED}.get(main["outcome"], 1)
        return LaunchResult(code, main["outcome"], None if main["emitted"] else main["message"])
    if signalled is not None:
        return LaunchResult(EXIT_CANCELLED, "cancelled",
                            "training cancelled; nothing was published")
    # A rank that said why it failed (its own error, not the others' going away) ...
    for rank in sorted(reports):
        if reports[rank]["outcome"] == "failed":
            return LaunchResult(1, "failed", f"rank {rank}: {reports[rank]['message']}; "
                                             "nothing was published")
    # ... else one the agent saw die without a word.
    for rank, failure in sorted(failures.items()):
        if rank not in reports:
            return LaunchResult(1, "failed", f"training rank {rank} {_death(failure.exitcode)};"
                                             f" nothing was published{kill_hint(failure.exitcode)}")
    if plan.node_rank != 0 and reports and all(
            report["outcome"] == "finished" for report in reports.values()):
        return LaunchResult(0, "finished", "this machine's ranks are done; machine 0 "
                                           "evaluates and publishes the adapter")
    where = " (see machine 0)" if plan.node_rank != 0 else ""
    return LaunchResult(1, "failed", f"the run failed on another machine{where}; nothing was "
                                     "published" if plan.nnodes > 1 else
                        "the training processes stopped without saying why; nothing was "
                        "published")


def _death(code: int) -> str:
    if code < 0 and -code in {member.value for member in signal.Signals}:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def kill_hint(code: int) -> str:
    """What to try after a process died with exit `code` (nobody here sends SIGKILL: most
    often the kernel's out-of-memory killer did)."""
    if code == -signal.SIGKILL:
        return " (if the machine ran out of memory, retry with a smaller --batch-size or " \
               "--max-length)"
    return ""
