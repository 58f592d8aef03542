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
`EVENT_LINE_LIMIT` bytes itself (`child_process`, shared with the exporter's runs: a longer
line is skipped and said, a failing reader stops the child and says why).
No Textual here: the app wraps the callbacks into messages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from sftchat.training.distributed import kill_hint
from sftchat.training.events import TERMINAL_EVENTS, make_event, parse_event
from sftchat.tui.child_process import (  # noqa: F401 - read_lines & co. are used from here
    EVENT_LINE_LIMIT, STOP_TIMEOUT_S, JsonLinesProcess, child_environment, read_lines,
)


def trainer_command(workspace: Path, global_args: Sequence[str] = (),
                    train_args: Sequence[str] = ()) -> list[str]:
    return [sys.executable, "-m", "sftchat.cli", "--workspace", str(workspace), *global_args,
            "train", "--json", *train_args]


def trainer_global_args(settings) -> list[str]:
    """The global options that make the trainer child load what the app loaded. Trust in the
    model's own code goes along only when the app trusts that very model (the child, like
    any `sftchat`, reads it from its command line or environment, never from the
    workspace's file)."""
    args = ["--model", settings.model, "--device", settings.device,
            "--template", settings.template]
    if not settings.quantize:
        args.append("--no-quantize")
    if settings.trust_remote_code:
        args += ["--trust-remote-code", settings.model]
    return args


def trainer_environment() -> dict[str, str]:
    return child_environment()


class TrainerProcess(JsonLinesProcess):
    """One trainer run. `await run()` starts it and returns when it has ended."""

    what = "the trainer"
    terminal = TERMINAL_EVENTS

    def __init__(self, command, on_event) -> None:
        super().__init__(command, on_event)
        self._started = False

    def parse(self, line: str) -> dict | None:
        return parse_event(line)

    def _deliver(self, event: dict) -> None:
        if event["event"] == "started" and not self.ended:
            self._started = True
        super()._deliver(event)

    def ending(self, event: dict) -> dict:
        # Lets the app tell "did not start" (no examples, workspace busy, bad model) from
        # a run that failed part-way.
        return {**event, "started": self._started}

    def failed_event(self, message: str) -> dict:
        return make_event("failed", message=message)

    def ended_without_event(self, code: int) -> dict:
        if self.cancel_requested:
            return make_event("cancelled", message="training cancelled; nothing was published")
        return make_event("failed", message=f"{self.died_text(code)}; nothing was published"
                                            f"{kill_hint(code)}")
