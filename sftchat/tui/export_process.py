"""Run `sftchat export --json` as a subprocess for the app: the request, its command line,
and the run (`ExportProcess`, a `child_process.JsonLinesProcess`).

The exporter prints `progress` events, then `finished` (format, folder, files, base_gguf,
next_step) or `failed` (error: one sentence). Every run ends with exactly one of
`finished`, `failed` or `cancelled` passed to `on_event`; a child that dies without saying
why gets a made-up `failed` from its exit code and last stderr line.

The exporter writes into a staging folder beside the target (`.NAME.partial-PID`) and renames
it into place at the end, so a stopped export never publishes anything; it removes that folder
itself when it fails or is stopped (SIGTERM unwinds like ctrl+c), and this side removes what a
child killed outright (SIGKILL, after the stop timed out) left behind. No Textual here.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from sftchat.export import OUTTYPES as ALL_OUTTYPES
from sftchat.tui.child_process import JsonLinesProcess, parse_json_event

# The tensor types the dialog offers for a `gguf` file (`sftchat export --outtype` also takes
# f32, rarely wanted).
OUTTYPES = tuple(outtype for outtype in ALL_OUTTYPES if outtype != "f32")
EVENT_KINDS = ("progress", "finished", "failed")


@dataclass(frozen=True)
class ExportRequest:
    adapter: str
    format: str
    folder: Path          # absolute
    outtype: str = "f16"
    force: bool = False   # replace a folder that exists and is not empty


def default_folder(workspace: Path, adapter: str, fmt: str) -> Path:
    """`<workspace>/exports/<adapter>-<format>`."""
    return Path(workspace).absolute() / "exports" / f"{adapter}-{fmt}"


def folder_from_text(text: str) -> Path:
    """What the user typed as a folder, absolute (a relative one from where the app runs,
    as `sftchat export --to` takes it)."""
    return Path(text.strip()).expanduser().absolute()


def occupied(folder: Path) -> bool:
    """The export would replace something: `folder` is a file, or a folder with entries."""
    if not folder.exists():
        return False
    if not folder.is_dir():
        return True
    return next(folder.iterdir(), None) is not None


def export_command(workspace: Path, request: ExportRequest,
                   trusted_model: str | None = None) -> list[str]:
    """The exporter's command line. `trusted_model`: the model the app was told to trust
    with its own code; the exporter trusts it only if it is the adapter's base."""
    command = [sys.executable, "-m", "sftchat.cli", "--workspace", str(workspace)]
    if trusted_model is not None:
        command += ["--trust-remote-code", trusted_model]
    command += ["export", request.adapter, "--to", str(request.folder), "--format",
                request.format, "--outtype", request.outtype, "--json"]
    return command + (["--force"] if request.force else [])


def staging_folders(folder: Path, pid: int | None = None) -> list[Path]:
    """The exporter's staging folders for `folder` (of process `pid`, or of any)."""
    pattern = f".{folder.name}.partial-{pid if pid is not None else '*'}"
    return sorted(folder.parent.glob(pattern)) if folder.parent.is_dir() else []


class ExportProcess(JsonLinesProcess):
    """One export run. `await run()` starts it and returns once it has ended and whatever
    it left half-written is gone."""

    what = "the exporter"
    terminal = ("finished", "failed", "cancelled")

    def __init__(self, workspace: Path, request: ExportRequest, on_event,
                 trusted_model: str | None = None) -> None:
        super().__init__(export_command(workspace, request, trusted_model), on_event)
        self.request = request
        self.finished: dict | None = None   # the `finished` event, once it came

    def parse(self, line: str) -> dict | None:
        event = parse_json_event(line, EVENT_KINDS)
        if event is not None and event["event"] == "finished":
            self.finished = event
        return event

    def failed_event(self, message: str) -> dict:
        return {"event": "failed", "error": message}

    def ending(self, event: dict) -> dict:
        return {**event, "adapter": self.request.adapter}

    async def exited(self, code: int) -> None:
        await asyncio.to_thread(self.remove_staging)

    def remove_staging(self) -> None:
        """Remove what an unfinished run left (a child killed outright has no chance to
        remove its staging folder itself). Only once it has exited."""
        if self.finished is None and self.process is not None and not self.running:
            for folder in staging_folders(self.request.folder, self.process.pid):
                shutil.rmtree(folder, ignore_errors=True)

    def ended_without_event(self, code: int) -> dict:
        if self.cancel_requested:
            return {"event": "cancelled",
                    "message": "export stopped; nothing was written to "
                               f"{self.request.folder}"}
        last = self.last_stderr_line().strip()
        if last.startswith("sftchat: error: "):
            # The command line's own one-sentence error (GUIDE §7), said as it is.
            return self.failed_event(last.removeprefix("sftchat: error: "))
        return self.failed_event(f"{self.died_text(code)}; nothing was written")
