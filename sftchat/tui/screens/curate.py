"""The curate modal: edit an instruction and its response, then save (ctrl+s) or cancel (Esc).

Used for saving a chat answer and for editing a stored example. Focus starts in the response
editor with the cursor at the end of its text, ready to fix the answer. Dismisses with
`CurateResult` on save, `None` on cancel.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, TextArea


@dataclass(frozen=True)
class CurateResult:
    instruction: str
    response: str


class CurateModal(ModalScreen[CurateResult | None]):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("escape", "cancel", "Cancel", priority=True),
    ]

    def __init__(self, instruction: str, response: str, title: str = "Save to dataset") -> None:
        super().__init__()
        self.instruction = instruction
        self.response = response
        self.title_text = title

    def compose(self):
        with Vertical(id="curate-dialog"):
            yield Label(Text(self.title_text), id="curate-title")
            yield Label("Instruction", classes="field-label")
            yield TextArea(self.instruction, id="curate-instruction", soft_wrap=True)
            yield Label("Response — fix it the way it should have been", classes="field-label")
            yield TextArea(self.response, id="curate-response", soft_wrap=True)
            yield Label("ctrl+s save · Esc cancel · F7 selects all", id="curate-hint")

    def on_mount(self) -> None:
        response = self.query_one("#curate-response", TextArea)
        response.focus()
        response.move_cursor(response.document.end)

    def action_save(self) -> None:
        instruction = self.query_one("#curate-instruction", TextArea).text
        response = self.query_one("#curate-response", TextArea).text
        if not instruction.strip() or not response.strip():
            self.notify("Both the instruction and the response need some text.",
                        severity="error", markup=False)
            return
        self.dismiss(CurateResult(instruction, response))

    def action_cancel(self) -> None:
        self.dismiss(None)
