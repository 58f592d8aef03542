"""A child process that speaks JSON lines on stdout, read without trusting it: the base of the
app's trainer (`trainer_process`) and exporter (`export_process`) runs.

The child runs niced, with a core left to the interface, so the app and the chat's own
generation stay responsive while it works. Every run ends with exactly one terminal event
passed to `on_event`; if the process dies without saying why (killed, crashed), the subclass
makes one up from its exit code and the last line it wrote to stderr (`died_text`).

What crosses the process boundary is bounded: this side reads lines up to
`EVENT_LINE_LIMIT` bytes itself — a longer line is skipped and counted, not fatal (asyncio's
own reader raises past its 64 KiB limit, which used to kill the reading task silently: the
panel stayed at "step…", the child blocked on a full pipe holding the workspace lock). Any
failure of the reading side ends the run the same way as a crash: the child is stopped
(SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`) and waited for, and one failed event says why.
Cancelled from outside (the app quitting), the child is asked to stop too: never left behind.
No Textual here: the app wraps the callbacks into messages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import asyncio
import json
import os
import shutil
import signal
from collections import deque
from typing import AsyncIterator, Callable, Sequence

# How long a child asked to stop may take to clean up before it is killed.
STOP_TIMEOUT_S = 15.0
# The longest event line read; events are a few hundred bytes, a few KiB at most.
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


def child_environment() -> dict[str, str]:
    """The app's environment with one core fewer for PyTorch, and unbuffered output."""
    env = dict(os.environ)
    cores = os.cpu_count() or 1
    # Leave the interface a core; torch reads these when the child starts.
    threads = str(max(1, cores - 1))
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("MKL_NUM_THREADS", threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def at_lower_priority(command: list[str]) -> list[str]:
    """The child runs niced (5) so that the app stays responsive. Through `nice(1)`, not a
    `preexec_fn`: with one, the child is a full `fork()` of the app (600 MiB with a model:
    157 ms with the event loop blocked, against 4.6 ms without — benchmarks/ui_latency.py).
    `nice` execs the command: the child keeps the pid the app sees."""
    nice = shutil.which("nice") if os.name == "posix" else None
    return [nice, "-n", "5", *command] if nice else command


def parse_json_event(line: str, kinds: Sequence[str]) -> dict | None:
    """One line as an event whose "event" is one of `kinds`; None for anything else."""
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, TypeError):
        return None
    if isinstance(event, dict) and event.get("event") in kinds:
        return event
    return None


class JsonLinesProcess(ABC):
    """One run of a child. `await run()` starts it and returns its exit code once it ended.

    Subclasses say what the child is called (`what`), which events end a run (`terminal`),
    how a line becomes an event (`parse`) and how the made-up endings read
    (`failed_event`, `ended_without_event`)."""

    what = "the process"
    terminal: tuple[str, ...] = ("finished", "cancelled", "failed")

    def __init__(self, command: Sequence[str], on_event: Callable[[dict], None]) -> None:
        self.command = list(command)
        self.on_event = on_event
        self.process: asyncio.subprocess.Process | None = None
        self.cancel_requested = False
        self._stderr_tail: deque[str] = deque(maxlen=20)
        self._ended = False
        self.overlong_lines = 0   # event lines skipped as longer than EVENT_LINE_LIMIT

    # -- what subclasses say --------------------------------------------------------------

    @abstractmethod
    def parse(self, line: str) -> dict | None:
        """The event a line of the child's stdout is, or None to skip it."""

    @abstractmethod
    def failed_event(self, message: str) -> dict:
        """The `failed` event that says `message`."""

    @abstractmethod
    def ended_without_event(self, code: int) -> dict:
        """The terminal event of a child that exited without one (cancelled, crashed)."""

    def ending(self, event: dict) -> dict:
        """The terminal event as delivered (a subclass may add to it)."""
        return event

    async def exited(self, code: int) -> None:  # noqa: B027 - a hook; most need nothing
        """Called once the child exited, before a made-up terminal event is delivered."""

    # -- the run ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def ended(self) -> bool:
        """A terminal event was delivered."""
        return self._ended

    def _deliver(self, event: dict) -> None:
        if self._ended:
            return
        if event["event"] in self.terminal:
            self._ended = True
            event = self.ending(event)
        self.on_event(event)

    def _deliver_safely(self, event: dict) -> None:
        """Deliver a terminal event even when `on_event` failed on the one before."""
        try:
            self._deliver(event)
        except Exception:  # noqa: BLE001 - the failure being reported is what matters
            self._ended = True

    async def run(self) -> int:
        try:
            self.process = await asyncio.create_subprocess_exec(
                *at_lower_priority(self.command), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
                env=child_environment(),
            )
        except OSError as exc:
            self._deliver(self.failed_event(f"could not start {self.what}: {exc}"))
            return -1
        try:
            await asyncio.gather(self._read_events(), self._read_stderr())
        except asyncio.CancelledError:
            # Cancelled from outside (the app quitting): never leave the child behind. It is
            # asked to stop (SIGTERM), so that it cleans up after itself.
            self.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - any failure here must still end the run
            await self.stop(timeout=STOP_TIMEOUT_S)
            self._deliver_safely(self.failed_event(
                f"reading {self.what}'s output failed ({type(exc).__name__}: {exc}); "
                f"{self.what} was stopped and nothing was published"))
        code = await self.process.wait()
        await self.exited(code)
        if not self._ended:
            self._deliver(self.ended_without_event(code))
        return code

    def died_text(self, code: int) -> str:
        """"the trainer exited with code 1: <its last stderr line>" and the like."""
        last = self.last_stderr_line()
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        detail = f": {last.strip()}" if last else ""
        if self.overlong_lines:
            detail += (f" (it wrote {self.overlong_lines} line(s) over "
                       f"{EVENT_LINE_LIMIT // 1024} KiB, which were skipped)")
        return f"{self.what} {how}{detail}"

    def last_stderr_line(self) -> str:
        return next((line for line in reversed(self._stderr_tail) if line.strip()), "")

    async def _read_events(self) -> None:
        assert self.process and self.process.stdout
        async for raw in read_lines(self.process.stdout):
            if raw is None:
                self.overlong_lines += 1
                continue
            event = self.parse(raw.decode("utf-8", "replace"))
            if event is not None:
                self._deliver(event)

    async def _read_stderr(self) -> None:
        assert self.process and self.process.stderr
        async for raw in read_lines(self.process.stderr):
            if raw is not None:
                self._stderr_tail.append(raw.decode("utf-8", "replace").rstrip("\r"))

    # -- stopping ---------------------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the child to stop (SIGTERM), once: a second SIGTERM may stop a child that
        handles the first in the middle of its clean-up."""
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
