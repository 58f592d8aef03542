"""The chat screen's side of exports: `/export`, the status line while one runs, and the one
notification that says how it ended. A mixin of `ChatScreen`.

`/export NAME FORMAT [DIR]` exports adapter NAME (or `latest`) as FORMAT into DIR (by default
`<workspace>/exports/NAME-FORMAT`; a folder that exists and is not empty is replaced only after
a yes); `/export cancel` stops it, `/export copy` copies the command that runs the last one.
The export runs in a subprocess owned by the app (`SftchatApp.start_export`); the dialog on
the adapters screen (`e`, `screens.export`) is the other way to start one.
"""

from __future__ import annotations

import shlex

from sftchat.text import strip_control
from sftchat.export import FORMATS
from sftchat.tui.export_process import ExportRequest, default_folder, folder_from_text
from sftchat.tui.messages import ExportEnded, ExportProgressed
from sftchat.tui.widgets.prompt_input import PromptInput

EXPORT_USAGE = f"/export NAME {'|'.join(FORMATS)} [DIR] · /export cancel · /export copy"


class ExportMixin:
    """`/export` and what an export shows in the chat, for `ChatScreen` (which provides
    `status`)."""

    def export_command(self, argument: str) -> None:
        try:
            words = shlex.split(argument)
        except ValueError as exc:
            self.notify(f"/export: {exc}. Usage: {EXPORT_USAGE}", severity="warning",
                        markup=False)
            return
        if words in (["cancel"], ["stop"]):
            self.action_cancel_export()
        elif words == ["copy"]:
            self.action_copy_export()
        elif len(words) not in (2, 3) or words[1] not in FORMATS:
            self.notify(f"Usage: {EXPORT_USAGE}", title="/export", markup=False, timeout=10)
        else:
            name, fmt = words[0], words[1]
            folder = (folder_from_text(words[2]) if len(words) == 3
                      else default_folder(self.app.settings.workspace, name, fmt))
            self.app.request_export(ExportRequest(name, fmt, folder))

    def action_export(self) -> None:
        """The palette's entry: `/export NAME ` in the input, NAME the adapter answering."""
        engine = self.app.engine
        name = (engine.active_adapter if engine else None) or "latest"
        prompt = self.query_one(PromptInput)
        prompt.text = f"/export {name} "
        prompt.focus()
        prompt.move_cursor(prompt.document.end)
        self.notify(f"Usage: {EXPORT_USAGE}", markup=False)

    def action_cancel_export(self) -> None:
        if not self.app.cancel_export():
            self.notify("No export is running.", markup=False)

    def action_copy_export(self) -> None:
        self.app.copy_export_command()

    def on_export_progressed(self, message: ExportProgressed) -> None:
        self.status.export = strip_control(message.text) or "…"

    def on_export_ended(self, message: ExportEnded) -> None:
        self.status.export = ""
        event = message.event
        if event["event"] == "finished":
            text = (f"Exported {event.get('adapter')} as {event.get('format')} to "
                    f"{event.get('folder')}. Run it: {event.get('next_step')} "
                    "(/export copy copies it)")
            title, severity, timeout = "Export", "information", 30
        elif event["event"] == "failed":
            text, title, severity, timeout = str(event.get("error")), "Export failed", "error", 20
        else:
            text = str(event.get("message") or "Export stopped.")
            title, severity, timeout = "Export", "information", 10
        # What the exporter says (paths, errors) is shown as text: no markup, no escapes.
        self.notify(strip_control(text), title=title, severity=severity, markup=False,
                    timeout=timeout)
