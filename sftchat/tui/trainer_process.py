"""Run `sftchat train --json` as a subprocess and turn its output into event callbacks.

The chat app trains through this: a separate process isolates crashes and GPU memory from
the chat, and cancel is a signal (SIGTERM: the trainer stops cleanly and publishes nothing).
The trainer gets one core fewer than the machine has and a lower priority, so the interface
and the chat's own generation stay responsive while it runs.

Every run ends with exactly one terminal event passed to `on_event`: `finished`,
`cancelled` or `failed`, with `started` added (whether training got past its setup). If the
process dies without saying why (killed, crashed), a `failed` event is made up from its exit
code and the last line it wrote to stderr.

What crosses the process boundary is bounded on both sides: the trainer's events carry counts
and a few ids, never whole lists (`events`), and this side reads lines up to
`EVENT_LINE_LIMIT` bytes itself — a longer line is skipped and said, not fatal (asyncio's own
reader raises past its 64 KiB limit, which used to kill the reading task silently: the panel
stayed at "step…", the child blocked on a full pipe holding the workspace lock). Any failure
of the reading side ends the run the same way as a crash: the child is stopped (SIGTERM, then
SIGKILL after `STOP_TIMEOUT_S`) and waited for, so its workspace lock is freed, and one
`failed` event says why.
No Textual here: the app wraps the callbacks into messages.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections import deque
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

from sftchat.training.distributed import kill_hint
from sftchat.training.events import TERMINAL_EVENTS, make_event, parse_event


def trainer_command(workspace: Path, global_args: Sequence[str] = (),
                    train_args: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "sftchat.cli", "--workspace", str(workspace), *global_args,
            "train", "--json", *train_args]


def trainer_environment() -> dict[str, str]:
    env = dict(os.environ)
    cores = os.cpu_count() or 1
    # Leave the interface a core; torch reads these when the trainer starts.
    threads = str(max(1, cores - 1))
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("MKL_NUM_THREADS", threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# How long a trainer asked to stop may take to clean up before it is killed.
STOP_TIMEOUT_S = 15.0
# The longest event line read; events are a few hundred bytes, `started` a few KiB at most.
EVENT_LINE_LIMIT = 256 * 1024
_CHUNK = 64 * 1024


async def read_lines(stream: asyncio.StreamReader,
                     limit: int = EVENT_LINE_LIMIT) -> AsyncIterator[bytes | None]:
    """The lines of `stream` without their newline; None in place of a line over `limit`
    bytes (its bytes are dropped as they come, so memory stays bounded too)."""
    buffer = b""
    overflowing = False
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            if buffer or overflowing:
                yield None if overflowing else buffer
            return
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > limit:
                    buffer, overflowing = b"", True
                break
            line, buffer = buffer[:newline], buffer[newline + 1:]
            if overflowing or len(line) > limit:
                overflowing = False
                yield None
            else:
                yield line


def _at_lower_priority(command: list[str]) -> list[str]:
    """The trainer runs niced (5) so that the app stays responsive. Through `nice(1)`, not a
    `preexec_fn`: with one, the child is a full `fork()` of the app (600 MiB with a model:
    157 ms with the event loop blocked, against 4.6 ms without — benchmarks/ui_latency.py)."""
    nice = shutil.which("nice") if os.name == "posix" else None
    return [nice, "-n", "5", *command] if nice else command


class TrainerProcess:
    """One trainer run. `await run()` starts it and returns when it has ended."""

    def __init__(self, command: Sequence[str], on_event: Callable[[dict], None]) -> None:
        self.command = list(command)
        self.on_event = on_event
        self.process: asyncio.subprocess.Process | None = None
        self.cancel_requested = False
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._ended = False
        self._started = False
        self.overlong_lines = 0   # event lines skipped as longer than EVENT_LINE_LIMIT

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def _deliver(self, event: dict) -> None:
        if self._ended:
            return
        if event["event"] == "started":
            self._started = True
        if event["event"] in TERMINAL_EVENTS:
            self._ended = True
            # Lets the app tell "did not start" (no examples, workspace busy, bad model) from
            # a run that failed part-way.
            event = {**event, "started": self._started}
        self.on_event(event)

    async def run(self) -> int:
        try:
            self.process = await asyncio.create_subprocess_exec(
                *_at_lower_priority(self.command), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
                env=trainer_environment(),
            )
        except OSError as exc:
            self._deliver(make_event("failed", message=f"could not start the trainer: {exc}"))
            return -1
        try:
            await asyncio.gather(self._read_events(), self._read_stderr())
        except asyncio.CancelledError:
            # Cancelled from outside (the app quitting): never leave the child behind. It is
            # asked to stop (SIGTERM), so that it deletes its staging folder and lock itself.
            self.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here must still end the run
            await self.stop(timeout=STOP_TIMEOUT_S)
            self._deliver_safely(make_event(
                "failed", message=f"reading the trainer's output failed ({type(exc).__name__}: "
                                  f"{exc}); the trainer was stopped and nothing was published"))
        code = await self.process.wait()
        if not self._ended:
            if self.cancel_requested:
                self._deliver(make_event("cancelled", message="training cancelled; "
                                                              "nothing was published"))
            else:
                last = next((line for line in reversed(self._stderr_tail) if line.strip()), "")
                how = (f"was killed by signal {-code}" if code < 0
                       else f"exited with code {code}")
                detail = f": {last.strip()}" if last else ""
                if self.overlong_lines:
                    detail += (f" (it wrote {self.overlong_lines} line(s) over "
                               f"{EVENT_LINE_LIMIT // 1024} KiB, which were skipped)")
                self._deliver(make_event(
                    "failed",
                    message=f"the trainer {how}{detail}; nothing was published{kill_hint(code)}"))
        return code

    def _deliver_safely(self, event: dict) -> None:
        """Deliver a terminal event even when `on_event` failed on the one before."""
        try:
            self._deliver(event)
        except Exception:  # noqa: BLE001 - the failure being reported is what matters
            self._ended = True

    async def _read_events(self) -> None:
        assert self.process and self.process.stdout
        async for raw in read_lines(self.process.stdout):
            if raw is None:
                self.overlong_lines += 1
                continue
            event = parse_event(raw.decode("utf-8", "replace"))
            if event is not None:
                self._deliver(event)

    async def _read_stderr(self) -> None:
        assert self.process and self.process.stderr
        async for raw in read_lines(self.process.stderr):
            if raw is not None:
                self._stderr_tail.append(raw.decode("utf-8", "replace").rstrip("\r"))

    def cancel(self) -> None:
        """Ask the trainer to stop (SIGTERM): it cleans up and publishes nothing. Asked once:
        a second SIGTERM makes the trainer stop at once, in the middle of its clean-up."""
        if self.running and not self.cancel_requested:
            self.cancel_requested = True
            self.process.send_signal(signal.SIGTERM)

    async def stop(self, timeout: float) -> None:
        """Cancel and wait for the process to exit; kill it if it takes over `timeout` s."""
        if self.process is None:
            return
        self.cancel()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            self.kill()
            await self.process.wait()

    def kill(self) -> None:
        if self.running:
            self.cancel_requested = True
            self.process.kill()
