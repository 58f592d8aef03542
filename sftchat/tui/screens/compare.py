"""Compare the same turn: the last prompt answered again by the base model, the adapter that
answered before and the one answering now, side by side (columns on a wide terminal,
stacked on a narrow one). Each answers after the same earlier turns, under the same system
prompt and sampling, as the chat's answer was given.

The answers stream in turn, in a worker, each generated as its model
(`ChatEngine.generate(adapter=...)`: the chat's own adapter is untouched). A model that cannot
answer — an adapter deleted meanwhile — says why in its column and cannot be picked.
`1`/`2`/`3` picks the best: the screen dismisses with (its index, every answer), and the chat
saves it as a curated example with the other answers kept as its rejected answers. Escape
closes without saving (and stops the answer in progress).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Footer, Label, Static

from sftchat.errors import SftchatError, error_line
from sftchat.text import one_line, strip_control

# Narrower than this, the columns are stacked.
WIDE_COLUMNS = 120


@dataclass
class CompareChunk(Message):
    column: int
    text: str


@dataclass
class CompareDone(Message):
    column: int
    text: str
    error: str | None = None   # why this model gave no answer


class CompareScreen(ModalScreen[tuple[int, list[str]] | None]):
    CSS_PATH = "review.tcss"
    BINDINGS = [
        Binding("1", "pick(0)", "Pick 1"),
        Binding("2", "pick(1)", "Pick 2"),
        Binding("3", "pick(2)", "Pick 3"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, engine, question: str, models: list[str | None], history=(),
                 system: str = "", settings=None) -> None:
        super().__init__()
        self.engine, self.question, self.models = engine, question, models
        self.history, self.system, self.settings = list(history), system, settings
        self.answers = [""] * len(models)
        self.done = [False] * len(models)
        self.errors: list[str | None] = [None] * len(models)
        self._cancel = threading.Event()

    def compose(self) -> ComposeResult:
        with Vertical(id="review-box"):
            yield Label(Text("Compare: " + one_line(strip_control(self.question), 100)),
                        id="review-title")
            with Container(id="compare-columns"):
                for index, model in enumerate(self.models):
                    with VerticalScroll(classes="compare-column"):
                        yield Label(Text(f"{index + 1} · {model or 'base model'}"),
                                    classes="field-label")
                        yield Static(Text("…"), id=f"compare-answer-{index}",
                                     classes="diff-text")
        yield Footer()

    def on_mount(self) -> None:
        self._layout(self.app.size.width)
        self.answer_all()

    def on_resize(self, event) -> None:
        self._layout(event.size.width)

    def _layout(self, width: int) -> None:
        self.query_one("#compare-columns").set_class(width < WIDE_COLUMNS, "stacked")

    @work(thread=True, exclusive=True, exit_on_error=False, group="compare")
    def answer_all(self) -> None:
        for column, model in enumerate(self.models):
            generation = self.engine.generate(self.question, history=self.history,
                                              system=self.system, settings=self.settings,
                                              cancel=self._cancel, adapter=model or "none")
            try:
                for piece in generation:
                    self.post_message(CompareChunk(column, piece))
            except (SftchatError, OSError) as error:   # e.g. the adapter was deleted meanwhile
                self.post_message(CompareDone(column, "", error_line(error)))
            else:
                self.post_message(CompareDone(column, generation.text))
            if self._cancel.is_set():
                return

    def on_compare_chunk(self, message: CompareChunk) -> None:
        self.answers[message.column] += message.text
        self._show(message.column)

    def on_compare_done(self, message: CompareDone) -> None:
        self.answers[message.column] = message.text
        self.done[message.column] = True
        self.errors[message.column] = message.error
        self._show(message.column)

    def _show(self, column: int) -> None:
        error = self.errors[column]
        self.query_one(f"#compare-answer-{column}", Static).update(
            Text(f"no answer: {error}", style="red") if error is not None
            else Text(strip_control(self.answers[column]) or "…"))

    def action_pick(self, index: int) -> None:
        if index >= len(self.models):
            return
        if not all(self.done):
            self.notify("Wait for every answer to finish before picking one.", markup=False)
            return
        if self.errors[index] is not None:
            self.notify(f"{index + 1} gave no answer: pick another.", markup=False)
            return
        self.dismiss((index, list(self.answers)))

    def action_close(self) -> None:
        self._cancel.set()
        self.dismiss(None)
