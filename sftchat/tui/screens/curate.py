"""The curate modal: edit an example — its instruction and response, and for a conversation
its system prompt and earlier turns — then save (ctrl+s) or cancel (Esc).

Used for saving a chat answer and for editing a stored example. Focus starts in the response
editor with the cursor at the end of its text, ready to fix the answer. A single-turn example
with no system prompt shows just the instruction and the response. A conversation shows, in
one scrolling column, the system prompt and each earlier turn (its message and its answer,
both editable) with two checkboxes: "keep in context" (untick it to drop the turn from the
example) and "learn this answer too" (off by default: only the last answer is learned).
Dismisses with `CurateResult` on save, `None` on cancel.

A field the user left alone is saved as it was given, not as the editor holds it: an editor
splits lines at every line break Unicode knows (form feeds, \u2028, a lone \r) and joins
them with one newline, and a model's answer may hold any of them. What the model saw and
said stays byte for byte what the example keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Label, TextArea

from sftchat.conversation import Turn


@dataclass(frozen=True)
class CurateResult:
    instruction: str
    response: str
    system: str = ""
    # Each earlier turn as edited, in the order given; None where it was dropped.
    earlier: tuple[Turn | None, ...] = ()

    @property
    def context(self) -> tuple[Turn, ...]:
        """The earlier turns the example keeps, with their learn flags."""
        return tuple(turn for turn in self.earlier if turn is not None)


def _titled(editor: TextArea, title: str) -> TextArea:
    editor.border_title = title
    return editor


class CurateModal(ModalScreen[CurateResult | None]):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("escape", "cancel", "Cancel", priority=True),
    ]

    def __init__(self, instruction: str, response: str, title: str = "Save to dataset",
                 system: str = "", context: Sequence[Turn] = ()) -> None:
        super().__init__()
        self.instruction = instruction
        self.response = response
        self.title_text = title
        self.system = system
        self.context = tuple(context)
        self._given: dict[str, tuple[str, str]] = {}  # editor id -> (text given, as shown)

    @property
    def conversation(self) -> bool:
        return bool(self.system or self.context)

    def compose(self):
        if not self.conversation:
            with Vertical(id="curate-dialog"):
                yield Label(Text(self.title_text), id="curate-title")
                yield from self._last_turn()
                yield Label("ctrl+s save · Esc cancel · F7 selects all", id="curate-hint")
            return
        with Vertical(id="curate-dialog", classes="conversation"):
            title = f"{self.title_text} — a conversation of {len(self.context) + 1} turns"
            yield Label(Text(title), id="curate-title")
            with VerticalScroll(id="curate-scroll"):
                yield _titled(TextArea(self.system, id="curate-system", soft_wrap=True),
                              "system prompt (empty: none)")
                for index, turn in enumerate(self.context):
                    yield from self._earlier_turn(index, turn)
                yield from self._last_turn()
            yield Label("ctrl+s save · Esc cancel · Tab next field · F7 selects all",
                        id="curate-hint")

    def _earlier_turn(self, index: int, turn: Turn):
        with Vertical(classes="curate-turn", id=f"curate-turn-{index}"):
            with Horizontal(classes="curate-turn-head"):
                yield Label(f"Turn {index + 1}", classes="curate-turn-title")
                yield Checkbox("keep in context", True, id=f"curate-keep-{index}",
                               compact=True)
                yield Checkbox("learn this answer too", turn.learn,
                               id=f"curate-learn-{index}", compact=True)
            yield _titled(TextArea(turn.instruction, id=f"curate-user-{index}",
                                   soft_wrap=True), "message")
            if turn.input:
                yield _titled(TextArea(turn.input, id=f"curate-input-{index}",
                                       soft_wrap=True), "input")
            yield _titled(TextArea(turn.response, id=f"curate-answer-{index}",
                                   soft_wrap=True), "answer")

    def _last_turn(self):
        yield Label("Instruction", classes="field-label")
        yield TextArea(self.instruction, id="curate-instruction", soft_wrap=True)
        yield Label("Response — fix it the way it should have been", classes="field-label")
        yield TextArea(self.response, id="curate-response", soft_wrap=True)

    def on_mount(self) -> None:
        given = {"curate-instruction": self.instruction, "curate-response": self.response,
                 "curate-system": self.system}
        for index, turn in enumerate(self.context):
            given.update({f"curate-user-{index}": turn.instruction,
                          f"curate-input-{index}": turn.input,
                          f"curate-answer-{index}": turn.response})
        for editor in self.query(TextArea):
            self._given[editor.id] = (given[editor.id], editor.text)
        response = self.query_one("#curate-response", TextArea)
        response.focus()
        response.move_cursor(response.document.end)

    @on(Checkbox.Changed)
    def _keep_changed(self, event: Checkbox.Changed) -> None:
        """An earlier turn dropped from the context: its editors and its learn box go
        grey (and back when it is kept again)."""
        checkbox_id = event.checkbox.id or ""
        if not checkbox_id.startswith("curate-keep-"):
            return
        index = checkbox_id.removeprefix("curate-keep-")
        turn = self.query_one(f"#curate-turn-{index}")
        turn.set_class(not event.value, "dropped")
        for widget in turn.query(TextArea):
            widget.disabled = not event.value
        self.query_one(f"#curate-learn-{index}", Checkbox).disabled = not event.value

    def _text(self, widget_id: str) -> str:
        """The editor's text, or the text it was given when the user left it as shown."""
        text = self.query_one(f"#{widget_id}", TextArea).text
        given, shown = self._given.get(widget_id, (text, text))
        return given if text == shown else text

    def _earlier(self) -> tuple[Turn | None, ...] | None:
        """The earlier turns as edited (None where dropped), or None after saying which one
        cannot be saved."""
        earlier: list[Turn | None] = []
        for index, turn in enumerate(self.context):
            if not self.query_one(f"#curate-keep-{index}", Checkbox).value:
                earlier.append(None)
                continue
            instruction = self._text(f"curate-user-{index}")
            response = self._text(f"curate-answer-{index}")
            if not instruction.strip() or not response.strip():
                self.notify(f"Turn {index + 1} needs a message and an answer (or untick "
                            "“keep in context” to drop it).", severity="error", markup=False)
                return None
            earlier.append(replace(
                turn, instruction=instruction, response=response,
                input=self._text(f"curate-input-{index}") if turn.input else "",
                learn=self.query_one(f"#curate-learn-{index}", Checkbox).value))
        return tuple(earlier)

    def action_save(self) -> None:
        instruction = self._text("curate-instruction")
        response = self._text("curate-response")
        if not instruction.strip() or not response.strip():
            self.notify("Both the instruction and the response need some text.",
                        severity="error", markup=False)
            return
        if not self.conversation:
            self.dismiss(CurateResult(instruction, response))
            return
        earlier = self._earlier()
        if earlier is not None:
            system = self._text("curate-system")
            self.dismiss(CurateResult(instruction, response,
                                      system if system.strip() else "", earlier))

    def action_cancel(self) -> None:
        self.dismiss(None)
