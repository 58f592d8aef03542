"""Measuring helpers for `ui_latency.py`: an event-loop lag probe with per-phase samples, a
watchdog thread that samples the loop thread's stack while the loop is late, resident memory,
and the Markdown that reports them.

Lag is how late a coroutine that asked to sleep `tick` seconds wakes up: the time a keypress
or a repaint would have waited for the loop at that moment. A late loop is either busy (its
stack shows with what), waiting for the GIL (another thread's C code holds it), or waiting
for a CPU (the machine is oversubscribed); the kernel's per-thread counters
(/proc/self/task/TID/schedstat: time on a CPU, time runnable but waiting for one) tell the
three apart for each spike. Nothing here imports sftchat or textual.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import sysconfig
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

# Frames of these packages are the app's own (or its UI library's): a spike is attributed to
# the innermost such frame of the loop thread's stack (paths as `_frame_text` shortens them).
OWN_CODE = ("sftchat/", "textual/", "rich/")
# Shortened in stacks: where packages and the standard library live.
PATH_PREFIXES = [(sysconfig.get_paths()["purelib"] + "/", ""),
                 (sysconfig.get_paths()["stdlib"] + "/", "stdlib/")]


def schedstat(native_id: int) -> tuple[float, float] | None:
    """Seconds thread `native_id` of this process has spent on a CPU and runnable but waiting
    for one (Linux; None elsewhere)."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as stat:
            on_cpu, waiting = stat.read().split()[:2]
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def rss_mb() -> float:
    """This process's resident memory in MiB (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return psutil.Process().memory_info().rss / 2**20
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no psutil and no VmRSS in /proc/self/status: cannot read memory")


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 is a lag that really happened)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Spike:
    """One sample of the loop thread while the loop was late."""

    phase: str
    tick: int
    late_ms: float                     # how late the loop was when the stack was taken
    stack: list[str]                   # the loop thread's frames, innermost last
    others: list[str]                  # every other thread: "name: innermost frame"
    lag_ms: float | None = None        # the whole lag of that tick, once the probe woke
    # For the loop thread, from the watchdog's last on-time poll before the spike to the
    # wake-up: when that was and its counters, then seconds on a CPU, runnable but waiting for
    # one, and the rest blocked (on the GIL, or in a system call).
    taken_at: float = 0.0
    sched: tuple[float, float] | None = None
    split: tuple[float, float, float] | None = None   # (on CPU, waiting for a CPU, blocked)
    watchdog_late_ms: float = 0.0      # how late the watchdog's own poll was at the sample
    due: float = 0.0                   # when the probe should have woken (perf_counter)

    @property
    def site(self) -> str:
        """The innermost frame in the app's (or Textual's, Rich's) code, else the innermost."""
        for frame in reversed(self.stack):
            if frame.startswith(OWN_CODE):
                return frame
        return self.stack[-1] if self.stack else "?"

    def woke(self, lag: float, native_id: int) -> None:
        self.lag_ms = lag * 1000
        now = schedstat(native_id)
        if now is not None and self.sched is not None:
            on_cpu, waiting = now[0] - self.sched[0], now[1] - self.sched[1]
            elapsed = time.perf_counter() - self.taken_at
            self.split = (on_cpu, waiting, max(0.0, elapsed - on_cpu - waiting))


@dataclass
class LagProbe:
    """Sleeps `tick` seconds in a loop on the running event loop and records how late each
    wake-up is, under the phase that was current when it went to sleep."""

    tick: float = 0.005
    phase: str = "start"
    samples: dict[str, list[float]] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # Read by the watchdog thread: the tick number and when its wake-up is due.
    ticks: int = 0
    due: float | None = None
    loop_thread: int | None = None
    loop_native_id: int | None = None
    spikes: dict[int, list[Spike]] = field(default_factory=dict)
    _phase_started: float = field(default_factory=time.perf_counter)
    _task: asyncio.Task | None = None

    def start(self) -> None:
        self.loop_thread = threading.get_ident()
        self.loop_native_id = threading.get_native_id()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self.enter("stopped")
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def enter(self, phase: str) -> None:
        """From now on, samples belong to `phase` (its wall time adds up over its visits)."""
        now = time.perf_counter()
        self.phase_seconds[self.phase] = self.phase_seconds.get(self.phase, 0.0) \
            + now - self._phase_started
        self.phase, self._phase_started = phase, now
        self.samples.setdefault(phase, [])

    async def _run(self) -> None:
        while True:
            phase = self.phase
            started = time.perf_counter()
            self.due = started + self.tick
            await asyncio.sleep(self.tick)
            lag = time.perf_counter() - self.due
            self.samples.setdefault(phase, []).append(lag)
            for spike in self.spikes.get(self.ticks, ()):
                spike.woke(lag, self.loop_native_id)
            self.ticks += 1

    def summary(self, phases: list[str]) -> list[dict]:
        rows = []
        everything: list[float] = []
        for phase in phases:
            lags = self.samples.get(phase) or []
            everything += lags
            rows.append(_row(phase, lags, self.phase_seconds.get(phase)))
        rows.append(_row("all of it", everything, sum(self.phase_seconds.get(p, 0.0)
                                                      for p in phases)))
        return rows


def _row(phase: str, lags: list[float], seconds: float | None) -> dict:
    ms = [lag * 1000 for lag in lags]
    return {"phase": phase, "seconds": seconds, "samples": len(ms),
            "p50_ms": statistics.median(ms) if ms else None,
            "p99_ms": percentile(ms, 0.99) if ms else None,
            "max_ms": max(ms) if ms else None,
            "over_50_ms": sum(1 for value in ms if value > 50)}


@dataclass
class Collection:
    phase: str
    generation: int
    started: float
    seconds: float


class GcRecorder:
    """Every garbage collection (`gc.callbacks`): its generation and how long it held the
    GIL. A full (generation 2) collection walks every tracked object — with torch,
    transformers and a model loaded, hundreds of thousands — and no other Python runs
    meanwhile, whichever thread triggered it."""

    def __init__(self, probe: LagProbe) -> None:
        self.probe = probe
        self.collections: list[Collection] = []
        self._started: dict[int, float] = {}

    def __enter__(self) -> GcRecorder:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        now, thread = time.perf_counter(), threading.get_ident()
        if phase == "start":
            self._started[thread] = now
        elif thread in self._started:
            started = self._started.pop(thread)
            self.collections.append(Collection(self.probe.phase, info["generation"], started,
                                               now - started))

    def during(self, start: float, end: float, at_least: float = 0.02) -> bool:
        """Whether a collection of at least `at_least` seconds overlapped [start, end]."""
        return any(c.seconds >= at_least and c.started < end and c.started + c.seconds > start
                   for c in self.collections)

    def table(self, phases: list[str]) -> str:
        lines = ["| phase | full (gen 2) collections | longest | total | gen 0/1 collections "
                 "| longest |", "|---|---|---|---|---|---|"]
        for phase in phases:
            full = [c.seconds * 1000 for c in self.collections
                    if c.phase == phase and c.generation == 2]
            young = [c.seconds * 1000 for c in self.collections
                     if c.phase == phase and c.generation < 2]
            lines.append(f"| {phase} | {len(full)} | {_ms(max(full, default=None))} ms | "
                         f"{sum(full):,.0f} ms | {len(young):,} | "
                         f"{_ms(max(young, default=None))} ms |")
        return "\n".join(lines)


class StackWatchdog(threading.Thread):
    """Every `poll` seconds: if the probe's wake-up is more than `threshold` late, take the
    loop thread's stack (and every other thread's innermost frame: a loop thread waiting for
    the GIL shows where it waits, the other threads show who holds it). A long stall is
    sampled again every `threshold`, up to `per_tick` times."""

    def __init__(self, probe: LagProbe, threshold: float = 0.05, poll: float = 0.01,
                 per_tick: int = 10, depth: int = 14) -> None:
        super().__init__(name="ui-latency-watchdog", daemon=True)
        self.probe, self.threshold, self.poll = probe, threshold, poll
        self.per_tick, self.depth = per_tick, depth
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        sampled_tick, taken, next_at = -1, 0, 0.0
        # The loop thread's counters at the last poll that found the loop on time: a spike's
        # split (on a CPU / waiting for one / blocked) is counted from there, so it covers the
        # whole spike even when this thread itself could not run during it.
        baseline: tuple[float, tuple[float, float] | None] = (time.perf_counter(), None)
        woke_at = time.perf_counter()
        while not self._halt.wait(self.poll):
            # How late this thread's own wake-up is: large when the whole process waited.
            now = time.perf_counter()
            own_late, woke_at = now - woke_at - self.poll, now
            probe = self.probe
            due, tick = probe.due, probe.ticks
            if due is None or probe.loop_native_id is None:
                continue
            late = now - due
            if late < self.threshold:
                baseline = (now, schedstat(probe.loop_native_id))
                continue
            if tick != sampled_tick:
                sampled_tick, taken, next_at = tick, 0, self.threshold
            if taken >= self.per_tick or late < next_at:
                continue
            spike = self._sample(probe, tick, late, baseline, own_late)
            if spike is not None:
                probe.spikes.setdefault(tick, []).append(spike)
            taken, next_at = taken + 1, late + self.threshold

    def _sample(self, probe: LagProbe, tick: int, late: float,
                baseline: tuple[float, tuple[float, float] | None],
                own_late: float) -> Spike | None:
        taken_at, sched = baseline
        frames = sys._current_frames()
        loop_frame = frames.get(probe.loop_thread)
        if loop_frame is None:
            return None
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        stack = [_frame_text(entry) for entry in traceback.extract_stack(loop_frame)]
        others = []
        for ident, frame in frames.items():
            if ident in (probe.loop_thread, threading.get_ident()):
                continue
            inner = traceback.extract_stack(frame)[-1:]
            if inner:
                others.append(f"{names.get(ident, ident)}: {_frame_text(inner[0])}")
        return Spike(probe.phase, tick, late * 1000, stack[-self.depth:], others,
                     taken_at=taken_at, sched=sched, watchdog_late_ms=own_late * 1000,
                     due=time.perf_counter() - late)


def _lag(spike: Spike) -> float:
    return spike.lag_ms or spike.late_ms


def _frame_text(entry: traceback.FrameSummary) -> str:
    path = entry.filename
    for prefix, short in PATH_PREFIXES:
        if path.startswith(prefix):
            path = short + path[len(prefix):]
            break
    else:
        # The project's own files: from the package folder on.
        for package in OWN_CODE:
            if "/" + package in path:
                path = package + path.split("/" + package, 1)[1]
                break
    return f"{path}:{entry.lineno} {entry.name}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}"


def lag_table(rows: list[dict]) -> str:
    lines = ["| phase | wall | samples | p50 | p99 | max | wake-ups > 50 ms |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        seconds = "–" if row["seconds"] is None else f"{row['seconds']:,.1f} s"
        lines.append(f"| {row['phase']} | {seconds} | {row['samples']:,} | "
                     f"{_ms(row['p50_ms'])} ms | {_ms(row['p99_ms'])} ms | "
                     f"{_ms(row['max_ms'])} ms | {row['over_50_ms']:,} |")
    return "\n".join(lines)


def spike_report(probe: LagProbe, collections: GcRecorder | None = None, top: int = 6,
                 frames: int = 10) -> str:
    """Why the loop was late: per phase, how the loop thread spent its late wake-ups (on a
    CPU, waiting for one, blocked); where its stack was, at the longest spikes first; the
    longest spike's stack at each of those sites."""
    spikes = [spike for tick in sorted(probe.spikes) for spike in probe.spikes[tick]]
    if not spikes:
        return "No wake-up was more than 50 ms late: no stack was sampled."
    lines = [f"Wake-ups more than 50 ms late: {len(probe.spikes)} ({len(spikes)} stack "
             "samples). From the last on-time check before each to its wake-up, the loop thread "
             "was (kernel schedstat; 'watchdog late too': the sampling thread could not run "
             "either, so no Python ran in the process):", "",
             "| phase | late wake-ups | on a CPU | runnable, waiting for a CPU | "
             "blocked (GIL or a system call) | watchdog late too | during a GC ≥ 20 ms |",
             "|---|---|---|---|---|---|---|"]
    by_phase: dict[str, list[tuple[float, float, float]]] = {}
    for tick in sorted(probe.spikes):
        first = probe.spikes[tick][0]
        by_phase.setdefault(first.phase, [])
        if first.split is not None:
            by_phase[first.phase].append(first.split)
    for phase, splits in by_phase.items():
        total = sum(sum(split) for split in splits) or 1.0
        shares = [sum(split[i] for split in splits) / total for i in range(3)]
        ticks = [spikes for spikes in probe.spikes.values() if spikes[0].phase == phase]
        # The watchdog thread was late by most of the spike too: no thread of this process
        # could run Python, because another thread held the GIL (in C code that does not
        # release it: "blocked") or the machine's other processes had the CPUs ("waiting").
        stalled = sum(1 for spikes in ticks
                      if spikes[0].watchdog_late_ms >= 0.5 * _lag(spikes[0]))
        in_gc = "–" if collections is None else sum(
            1 for spikes in ticks if collections.during(
                spikes[0].due, spikes[0].due + _lag(spikes[0]) / 1000))
        lines.append(f"| {phase} | {len(ticks)} | "
                     + " | ".join(f"{share:.0%}" for share in shares)
                     + f" | {stalled} | {in_gc} |")
    counts = Counter((spike.phase, spike.site) for spike in spikes)
    worst_of: dict[tuple[str, str], Spike] = {}
    for spike in spikes:
        key = (spike.phase, spike.site)
        if key not in worst_of or _lag(spike) > _lag(worst_of[key]):
            worst_of[key] = spike
    # The longest spikes first: a single 500 ms stall matters more than many 60 ms ones.
    ranked = sorted(worst_of, key=lambda key: -_lag(worst_of[key]))[:top]
    lines += ["", "Where the loop thread's stack was (its innermost frame in sftchat, "
              "textual or rich code, else its innermost frame), longest spikes first:", "",
              "| longest lag | phase | site | samples there |", "|---|---|---|---|"]
    for key in ranked:
        lines.append(f"| {_lag(worst_of[key]):,.0f} ms | {key[0]} | `{key[1]}` | "
                     f"{counts[key]} |")
    for phase, site in ranked:
        worst = worst_of[(phase, site)]
        split = ("" if worst.split is None else " on a CPU {:.0f} ms, waiting for a CPU "
                 "{:.0f} ms, blocked {:.0f} ms;".format(*(x * 1000 for x in worst.split)))
        if worst.watchdog_late_ms > 25:
            split += f" the watchdog itself woke {worst.watchdog_late_ms:,.0f} ms late;"
        lines += ["", f"Longest at `{site}` ({phase}, {_lag(worst):,.0f} ms;"
                  f"{split} loop thread, innermost last):", "```",
                  *worst.stack[-frames:], "-- other threads (innermost frame) --",
                  *worst.others, "```"]
    return "\n".join(lines)
