"""The one thread that touches the model: jobs, priorities, chunks, cancel events.

Everything the app does with the loaded model — a chat answer, the review's replay, a
`/compare` column, a swap, an adapter load — is a *job* run by one `EngineThread`, so no two
of them ever run at once and no lock is needed (none is held across a generator's yield,
where an abandoned consumer would keep it).

A job is a generator: each `next()` is one *step* (a token, a batch of the replay, a load),
and between steps the thread picks the most urgent job waiting — `CHAT` before `SWAP` before
`BACKGROUND`, first come first served within a priority. So a chat answer asked while a
review replays thousands of examples starts after the batch in progress, not after the
review. A job that would rather wait (a chat answer whose reader stopped reading) yields
`PARK`: it is set aside until `wake()` and the others run meanwhile.

Each job carries its own `cancel` event, which its steps check; `cancel_all()` (quit) sets
every one. A job may also be cancelled before it starts. Results and exceptions travel back
to the submitter through `Job.wait()`.

Steps run with autograd off for the whole thread (grad mode is thread-local in torch): a
job's `torch.no_grad()` entered inside a generator would otherwise leak into the steps of
the jobs interleaved with it.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import threading
import weakref
from typing import Any, Callable, Generator

# Priorities: lower runs first.
CHAT = 0          # an answer the user is waiting for
SWAP = 1          # a command the user gave (switch adapter, load, unload)
BACKGROUND = 2    # review replays, compare columns, eval: they yield to the above

PARK = object()   # yielded by a step: do not run me again until `wake()`

Steps = Generator[Any, None, Any]
# At exit, the engine threads still running stop first: a daemon thread killed inside a
# torch kernel during interpreter shutdown aborts the process.
EXIT_JOIN_S = 10
_running: "weakref.WeakSet[EngineThread]" = weakref.WeakSet()


class JobCancelled(Exception):
    """The job's cancel event was set before it finished."""


class Cancel:
    """A job's cancel flag: set by the engine (`cancel_all`, an abandoned answer) without
    touching the caller's own event, which — if given — cancels the job too (a screen may
    share one event among several jobs: one answer's end must not stop the next)."""

    def __init__(self, caller: threading.Event | None = None) -> None:
        self.caller = caller
        self._own = threading.Event()

    def is_set(self) -> bool:
        return self._own.is_set() or (self.caller is not None and self.caller.is_set())

    def set(self) -> None:
        self._own.set()


class Job:
    """One unit of work on the engine thread; `wait()` returns its result or raises."""

    def __init__(self, steps: Steps, priority: int, cancel: Cancel | None, name: str) -> None:
        self.steps = steps
        self.priority = priority
        self.cancel = cancel or Cancel()
        self.name = name
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self.parked = False

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError(f"engine job {self.name!r} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self._done.set()


class EngineThread:
    """Runs jobs one step at a time, most urgent first, on one daemon thread."""

    def __init__(self, name: str = "sftchat-engine") -> None:
        self._queue: list[tuple[int, int, Job]] = []
        self._order = itertools.count()
        self._seq: dict[int, int] = {}        # id(job) -> its place in line (kept when re-queued)
        self._live: set[Job] = set()          # queued, parked or running
        self._changed = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _running.add(self)

    @property
    def live_jobs(self) -> int:
        """Jobs queued, parked or running."""
        with self._changed:
            return len(self._live)

    @property
    def on_engine_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def submit(self, steps: Steps, priority: int, cancel: Cancel | None = None,
               name: str = "") -> Job:
        """Queue `steps` (a generator: one step per `next`); `cancel` is the flag its steps
        check (give the same one to both)."""
        job = Job(steps, priority, cancel, name)
        with self._changed:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._seq[id(job)] = next(self._order)
            self._live.add(job)
            self._push(job)
        return job

    def call(self, function: Callable[[], Any], priority: int = SWAP, name: str = "") -> Any:
        """Run `function` as a one-step job and return its result (inline when called from
        a job: the engine thread must never wait for itself)."""
        if self.on_engine_thread:
            return function()

        def one_step():
            return function()
            yield  # never reached: makes this a generator (one step)

        return self.submit(one_step(), priority, name=name).wait()

    def wake(self, job: Job) -> None:
        """Queue a parked job again (its reader is reading)."""
        with self._changed:
            if job.parked and job in self._live:
                job.parked = False
                self._push(job)

    def cancel_all(self) -> None:
        """Set every live job's cancel event and wake the parked ones so they can end."""
        with self._changed:
            for job in list(self._live):
                job.cancel.set()
                if job.parked:
                    job.parked = False
                    self._push(job)

    def close(self) -> None:
        """Cancel everything and let the thread end."""
        self.cancel_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    # ------------------------------------------------------------------ the thread

    def _push(self, job: Job) -> None:
        heapq.heappush(self._queue, (job.priority, self._seq[id(job)], job))
        self._changed.notify()

    def _next_job(self) -> Job | None:
        with self._changed:
            while not self._queue:
                if self._closed:
                    return None
                self._changed.wait()
            return heapq.heappop(self._queue)[2]

    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        while (job := self._next_job()) is not None:
            self._step(job)

    def _step(self, job: Job) -> None:
        try:
            outcome = next(job.steps)
        except StopIteration as stop:
            self._retire(job, result=stop.value)
        except BaseException as error:  # noqa: BLE001 - travels to whoever waits for the job
            self._retire(job, error=error)
        else:
            with self._changed:
                if outcome is PARK:
                    job.parked = True
                else:
                    self._push(job)

    def _retire(self, job: Job, result: Any = None, error: BaseException | None = None) -> None:
        with self._changed:
            self._live.discard(job)
            self._seq.pop(id(job), None)
        job.steps.close()
        job._finish(result, error)


@atexit.register
def _stop_all_at_exit() -> None:
    threads = list(_running)
    for engine_thread in threads:
        engine_thread.close()
    for engine_thread in threads:
        engine_thread._thread.join(EXIT_JOIN_S)
