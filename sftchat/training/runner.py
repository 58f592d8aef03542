"""Run `sftchat train --json` as a subprocess and turn its output into event callbacks.

The chat app trains through this: a separate process isolates crashes and GPU memory from
the chat, and cancel is a signal (SIGTERM: the trainer stops cleanly and publishes nothing).
The trainer gets one core fewer than the machine has and a lower priority, so the interface
and the chat's own generation stay responsive while it runs.

Every run ends with exactly one terminal event passed to `on_event`: `finished`,
`cancelled` or `failed`, with `started` added (whether training got past its setup). If the
process dies without saying why (killed, crashed), a `failed` event is made up from its exit
code and the last line it wrote to stderr.
No Textual here: the app wraps the callbacks into messages.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

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


def _lower_priority() -> None:  # runs in the child before exec
    try:
        os.nice(5)
    except OSError:
        pass  # not allowed to lower it: the trainer simply runs at normal priority


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
                *self.command, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
                env=trainer_environment(),
                preexec_fn=_lower_priority if os.name == "posix" else None,
            )
        except OSError as exc:
            self._deliver(make_event("failed", message=f"could not start the trainer: {exc}"))
            return -1
        await asyncio.gather(self._read_events(), self._read_stderr())
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
                self._deliver(make_event(
                    "failed",
                    message=f"the trainer {how}{detail}; nothing was published{kill_hint(code)}"))
        return code

    async def _read_events(self) -> None:
        assert self.process and self.process.stdout
        async for raw in self.process.stdout:
            event = parse_event(raw.decode("utf-8", "replace"))
            if event is not None:
                self._deliver(event)

    async def _read_stderr(self) -> None:
        assert self.process and self.process.stderr
        async for raw in self.process.stderr:
            self._stderr_tail.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def cancel(self) -> None:
        """Ask the trainer to stop (SIGTERM): it cleans up and publishes nothing."""
        if self.running:
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
