"""The export dialog: one adapter out as GGUF, a LoRA GGUF, a merged folder or for Ollama.

Opened with `e` on the adapters screen. The form: the format (one line each saying what it
is), the target folder (by default `<workspace>/exports/<adapter>-<format>`, following the
format until the user edits it), the GGUF type (for `gguf` only), Export and Cancel. A
folder that exists and is not empty is replaced only after a yes (`SftchatApp.request_export`).

The export itself is the app's (`SftchatApp.start_export`: `sftchat export --json` in a
subprocess), so the chat stays usable: while it runs the dialog shows its progress; Escape
stops it (nothing is published), `h` hides the dialog and the export goes on, its progress in
the status line. When it ends, the chat screen says so in one notification (the folder and
the command that runs the export, or the error); the dialog, if still open, shows the result
and `c` copies that command. What the exporter says is shown as text, never markup.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, RadioButton, RadioSet

from sftchat.export import FORMATS
from sftchat.text import one_line, strip_control
from sftchat.tui.export_process import (
    OUTTYPES, ExportRequest, default_folder, folder_from_text,
)
from sftchat.tui.messages import ExportEnded, ExportProgressed

FORM, RUNNING, DONE = "form", "running", "done"
# The progress lines a dialog keeps (it shows the last).
PROGRESS_KEPT = 50


def plain(text: object, width: int = 200) -> Text:
    return Text(one_line(strip_control(str(text)), width))


class ExportScreen(ModalScreen[None]):
    """Exports `adapter` of the app's workspace."""

    CSS_PATH = "export.tcss"
    AUTO_FOCUS = "#export-format"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close / stop"),
        Binding("h", "hide", "Hide (it goes on)"),
        Binding("c", "copy", "Copy command"),
    ]
    # The keys that mean something in each state (the others stay out of the footer; in the
    # form, `h` and `c` are typed into the folder).
    KEYS: ClassVar[dict[str, set[str]]] = {FORM: {"close"}, RUNNING: {"close", "hide"},
                                           DONE: {"close", "copy"}}

    def __init__(self, adapter: str, workspace: Path) -> None:
        super().__init__()
        self.adapter, self.workspace = adapter, Path(workspace)
        self.state = FORM
        self.result: dict | None = None   # the `finished` event, once it came
        self.progress: deque[str] = deque(maxlen=PROGRESS_KEPT)  # what the run said so far
        self._default = default_folder(self.workspace, adapter, next(iter(FORMATS)))

    def compose(self):
        with Vertical(id="export-dialog"):
            yield Label(plain(f"Export adapter {self.adapter}"), id="export-title")
            yield Label(Text("Format"), classes="field-label")
            with RadioSet(id="export-format"):
                for index, (name, what) in enumerate(FORMATS.items()):
                    yield RadioButton(Text(f"{name:<10} {what}"), value=index == 0, name=name,
                                      id=f"format-{name}")
            yield Label(Text("Folder"), classes="field-label")
            yield Input(str(self._default), id="export-folder")
            yield Label(Text("GGUF type (gguf only)"), classes="field-label")
            with RadioSet(id="export-outtype"):
                for outtype in OUTTYPES:
                    yield RadioButton(Text(outtype), value=outtype == OUTTYPES[0], name=outtype,
                                      id=f"outtype-{outtype}")
            yield Label(Text(""), id="export-status")
            with Horizontal(id="export-buttons"):
                yield Button("Export", variant="primary", id="export-run")
                yield Button("Copy command", id="export-copy")
                yield Button("Hide", id="export-hide")
                yield Button("Cancel", id="export-cancel")
        yield Footer()

    def on_mount(self) -> None:
        self._show(FORM, focus=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("close", "hide", "copy"):
            return action in self.KEYS[self.state]
        return True

    # -- the form ---------------------------------------------------------------------------

    @property
    def format(self) -> str:
        pressed = self.query_one("#export-format", RadioSet).pressed_button
        return pressed.name if pressed is not None else next(iter(FORMATS))

    @property
    def outtype(self) -> str:
        pressed = self.query_one("#export-outtype", RadioSet).pressed_button
        return pressed.name if pressed is not None else OUTTYPES[0]

    @on(RadioSet.Changed, "#export-format")
    def _format_changed(self) -> None:
        folder = self.query_one("#export-folder", Input)
        new = default_folder(self.workspace, self.adapter, self.format)
        if folder_from_text(folder.value) == self._default:   # not edited: it follows
            folder.value = str(new)
        self._default = new
        self.query_one("#export-outtype", RadioSet).disabled = self.format != "gguf"

    def request(self) -> ExportRequest | None:
        text = self.query_one("#export-folder", Input).value
        if not text.strip():
            self._say("Give the folder to export into.", error=True)
            return None
        return ExportRequest(self.adapter, self.format, folder_from_text(text),
                             self.outtype if self.format == "gguf" else OUTTYPES[0])

    @on(Button.Pressed, "#export-run")
    @on(Input.Submitted, "#export-folder")
    def _start(self) -> None:
        if self.state != FORM:
            return
        request = self.request()
        if request is not None:
            self.app.request_export(request, lambda outcome: self._requested(request, outcome))

    def _requested(self, request: ExportRequest, outcome: str) -> None:
        if outcome == "started":
            self._say(f"Exporting {self.adapter} as {request.format}…")
            self._show(RUNNING)
        elif outcome == "declined":
            self._say(f"Nothing was written: {request.folder} is kept as it is. Pick another "
                      "folder, or export again and replace it.")

    # -- the run ----------------------------------------------------------------------------

    def on_export_progressed(self, message: ExportProgressed) -> None:
        if self.state == RUNNING:
            self.progress.append(message.text)
            self._say(message.text)

    def on_export_ended(self, message: ExportEnded) -> None:
        if self.state != RUNNING:
            return
        event = message.event
        if event["event"] == "finished":
            self.result = event
            files = ", ".join(str(name) for name in event.get("files") or [])
            self._say(f"Exported to {event.get('folder')}\nfiles: {files}\n"
                      f"run it: {event.get('next_step')}  (c copies it)")
            self._show(DONE)
        elif event["event"] == "failed":
            self._say(f"Export failed: {event.get('error')}", error=True)
            self._show(FORM)
        else:
            self._say(str(event.get("message") or "Export stopped."))
            self._show(FORM)

    # -- keys and buttons -------------------------------------------------------------------

    @on(Button.Pressed, "#export-cancel")
    def action_close(self) -> None:
        if self.state == RUNNING:
            # Stops the exporter; the dialog stays until it has ended (`on_export_ended`).
            self.app.cancel_export()
        else:
            self.dismiss(None)

    @on(Button.Pressed, "#export-hide")
    def action_hide(self) -> None:
        if self.state == RUNNING:
            self.notify("The export goes on in the background (its progress is in the status "
                        "line); /export cancel stops it.", markup=False)
            self.dismiss(None)

    @on(Button.Pressed, "#export-copy")
    def action_copy(self) -> None:
        if self.state == DONE and self.result is not None:
            self.app.copy_export_command(self.result)

    def _say(self, text: str, error: bool = False) -> None:
        """The dialog's status lines: the exporter's words as text, never markup."""
        shown = "\n".join(one_line(strip_control(line), 300) for line in text.splitlines())
        status = self.query_one("#export-status", Label)
        status.update(Text(shown))
        status.set_class(error, "error")

    def _show(self, state: str, focus: bool = True) -> None:
        self.state = state
        self.refresh_bindings()
        form = state == FORM
        for selector in ("#export-format", "#export-folder"):
            self.query_one(selector).disabled = not form
        self.query_one("#export-outtype", RadioSet).disabled = not form or self.format != "gguf"
        buttons = {"#export-run": form, "#export-copy": state == DONE,
                   "#export-hide": state == RUNNING}
        for selector, shown in buttons.items():
            self.query_one(selector, Button).display = shown
        self.query_one("#export-cancel", Button).label = {
            FORM: "Cancel", RUNNING: "Stop export", DONE: "Close"}[state]
        if focus:
            self.query_one({FORM: "#export-folder", RUNNING: "#export-cancel",
                            DONE: "#export-copy"}[state]).focus()
