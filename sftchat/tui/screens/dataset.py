"""The dataset screen: browse, search, edit and delete the curated examples.

The table shows one page (`PAGE_SIZE` rows) at a time, read with one
`ExampleStore.iter_examples(search, limit, offset)` query, so the screen opens at once on a
dataset of any size and never holds more than a page. `]` / `[` turn pages, typing in the
search box filters by text, `e` / Enter edits the highlighted example in the curate modal,
`d` / Delete removes it after a confirmation, Escape closes the screen. A conversation's
instruction cell starts with its number of turns and a mark for a system prompt; the curate
modal edits its system prompt and earlier turns too.

How many examples match a search is counted in a thread worker on a connection of its own:
counting means reading every matching row (about 0.1 s on 50,000 examples), too long to do
on the event loop at every keystroke. Edits and deletes also run in workers on connections of
their own, because a write waits while another process (a CLI import) holds the write lock;
they post `ExampleEdited` / `ExampleDeleted`, and a failed one is reported by the screen's
worker-state handler. What stays on the event loop is one small read per page: in WAL mode
a read never waits for a writer.

Cells are `rich.text.Text` built with `one_line(strip_control(...))`: example text comes from
a model or an imported file and must never be read as markup or as escape sequences.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Label
from textual.worker import Worker, WorkerState, get_current_worker

from ...conversation import conversation_marks
from ...dataset.store import Example, ExampleStore, StoreError
from ...text import one_line, strip_control
from .confirm import ConfirmModal
from .curate import CurateModal, CurateResult

PAGE_SIZE = 200
# Cell widths in characters: with the table's padding and scrollbar, under 120 columns, so
# a common terminal shows every column without scrolling sideways.
INSTRUCTION_WIDTH = 32
RESPONSE_WIDTH = 46
SOURCE_WIDTH = 16
SEARCH_SHOWN_WIDTH = 30
COUNT_DELAY_S = 0.25
# How often screens check whether another process (a second app, a CLI) changed the dataset:
# a PRAGMA read without I/O, so polling is cheaper than any notification would be.
OUTSIDE_CHANGES_POLL_S = 1.0
# A busy or broken database file surfaces as sqlite3.Error, not only as StoreError.
DB_ERRORS = (StoreError, sqlite3.Error)
EMPTY_TEXT = ("No examples yet — save an answer from the chat with ctrl+s, or use "
              "`sftchat data add`.")


def _cell(text: str, width: int) -> Text:
    """One table cell of untrusted text: no control characters, one line, never markup."""
    return Text(one_line(strip_control(text), width))


def is_edited(example: Example) -> bool:
    """The example came from a chat answer that the user changed before saving (or later)."""
    return example.original_response is not None and example.original_response != example.response


def conversation_mark(example: Example) -> str:
    """"" for a single-turn example; "[3 turns] ", "[system] ", "[2 turns, system] "."""
    parts = conversation_marks(example)
    return f"[{', '.join(parts)}] " if parts else ""


def row_cells(example: Example) -> tuple[Text, ...]:
    return (
        Text(str(example.id), justify="right"),
        _cell(conversation_mark(example) + example.instruction, INSTRUCTION_WIDTH),
        _cell(example.response, RESPONSE_WIDTH),
        _cell(example.source, SOURCE_WIDTH),
        Text("yes" if is_edited(example) else ""),
    )


@dataclass
class MatchesCounted(Message):
    """The count worker finished: `count` examples match `search` (None: counting failed)."""

    generation: int
    search: str
    count: int | None


@dataclass
class ExampleEdited(Message):
    example_id: int


@dataclass
class ExampleDeleted(Message):
    example_id: int


class DatasetScreen(Screen[None]):
    """Pages through `ExampleStore(data_dir)`; push it, it pops itself on Escape."""

    CSS_PATH = "dataset.tcss"
    AUTO_FOCUS = "#dataset-table"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("e", "edit", "Edit"),
        Binding("d,delete", "delete", "Delete", key_display="d"),
        # `[` and `]` rather than pageup/pagedown: those already scroll inside the page.
        Binding("left_square_bracket,ctrl+pageup", "previous_page", "Prev page",
                key_display="["),
        Binding("right_square_bracket,ctrl+pagedown", "next_page", "Next page",
                key_display="]"),
        Binding("slash", "focus_search", "Search", key_display="/"),
    ]

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.store: ExampleStore | None = None
        self.search = ""
        self.page_offset = 0
        self.page_ids: list[int] = []
        self.has_next = False
        self.total = 0
        # Matches of the current search; None while the worker counts them.
        self.matches: int | None = None
        # Bumped at every recount, so a late answer for an older count is ignored.
        self.count_generation = 0
        self._count_timer: Timer | None = None

    def compose(self):
        yield Input(placeholder="Search instructions, inputs and responses…  (/ to focus)",
                    id="dataset-search")
        yield DataTable(id="dataset-table", cursor_type="row", zebra_stripes=True)
        yield Label("", id="dataset-page")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#dataset-table", DataTable)
        for label in ("id", "instruction", "response", "source", "edited?"):
            table.add_column(label, key=label)
        try:
            self.store = ExampleStore(self.data_dir)
        except DB_ERRORS as exc:
            # The screen stays open and says why, rather than taking the app down.
            self._page_label().update(Text(str(exc)))
            return
        self._load_page(recount=True)
        # Another app or a CLI may change the dataset while this screen is open.
        self._outside_changes = self.store.outside_changes()
        self.set_interval(OUTSIDE_CHANGES_POLL_S, self._notice_outside_changes)

    def _notice_outside_changes(self) -> None:
        if self.store is None:
            return
        try:
            version = self.store.outside_changes()
        except DB_ERRORS:
            return  # the next page load reports it
        if version != self._outside_changes:
            self._outside_changes = version
            self._load_page(cursor_row=max(0, self._table().cursor_row), recount=True)

    def on_unmount(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ the page

    def _table(self) -> DataTable:
        return self.query_one("#dataset-table", DataTable)

    def _page_label(self) -> Label:
        return self.query_one("#dataset-page", Label)

    def _load_page(self, cursor_row: int = 0, recount: bool = False) -> None:
        """Show the page at `self.page_offset`, with the cursor on `cursor_row` (clamped).

        One query of PAGE_SIZE + 1 rows: the extra row only tells whether a next page exists.
        """
        if self.store is None:
            return
        search = self.search if self.search.strip() else None
        try:
            rows = list(self.store.iter_examples(search, PAGE_SIZE + 1, self.page_offset))
            # The page emptied (its last rows were deleted, here or by another process):
            # step back to the last page that has rows.
            while not rows and self.page_offset > 0:
                self.page_offset = max(0, self.page_offset - PAGE_SIZE)
                cursor_row = PAGE_SIZE - 1
                rows = list(self.store.iter_examples(search, PAGE_SIZE + 1, self.page_offset))
            self.total = self.store.count()
        except DB_ERRORS as exc:
            self.notify(f"Cannot read the dataset: {exc}", severity="error", markup=False)
            return
        self.has_next = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        self.page_ids = [example.id for example in rows]

        table = self._table()
        table.clear()
        for example in rows:
            table.add_row(*row_cells(example), key=str(example.id))
        if rows:
            table.move_cursor(row=min(cursor_row, len(rows) - 1), animate=False)

        if search is None or recount:
            self._forget_count()
        if search is None:
            self.matches = self.total
        elif recount:
            if self.page_offset == 0 and not self.has_next:
                self.matches = len(rows)  # the whole result is on this page
            else:
                self.matches = None
                # Count once the user pauses typing, not at every keystroke: each count
                # reads every match, and a count for a search already replaced is wasted.
                self._count_timer = self.set_timer(
                    COUNT_DELAY_S, partial(self._count_matches, self.count_generation, search))
        self._show_position()

    def _forget_count(self) -> None:
        """Drop a pending or running count: its answer would be for an older search."""
        self.count_generation += 1
        if self._count_timer is not None:
            self._count_timer.stop()
            self._count_timer = None

    def _show_position(self) -> None:
        search = one_line(strip_control(self.search), SEARCH_SHOWN_WIDTH)
        if not self.page_ids:
            if self.search.strip():
                text = f"No example matches “{search}” ({self.total:,} examples in all)."
            else:
                text = EMPTY_TEXT
        else:
            first, last = self.page_offset + 1, self.page_offset + len(self.page_ids)
            if self.search.strip():
                matches = "…" if self.matches is None else f"{self.matches:,}"
                text = (f"rows {first:,}–{last:,} of {matches} matching “{search}” "
                        f"({self.total:,} examples in all)")
            else:
                text = f"rows {first:,}–{last:,} of {self.total:,}"
        # Text, not a str: the search string is the user's and must not be read as markup.
        self._page_label().update(Text(text))

    @work(thread=True, exclusive=True, group="dataset-count", exit_on_error=False)
    def _count_matches(self, generation: int, search: str) -> None:
        # Its own connection: the screen's connection belongs to the event loop thread.
        worker = get_current_worker()
        count: int | None = 0
        try:
            store = ExampleStore(self.data_dir)
            try:
                for count, _ in enumerate(store.iter_examples(search), start=1):
                    if count % 1000 == 0 and worker.is_cancelled:
                        return
            finally:
                store.close()
        except DB_ERRORS:
            count = None
        self.post_message(MatchesCounted(generation, search, count))

    def on_matches_counted(self, message: MatchesCounted) -> None:
        if message.generation != self.count_generation or message.search != self.search:
            return
        self.matches = message.count
        self._show_position()

    def _highlighted_id(self) -> int | None:
        table = self._table()
        if not self.page_ids or table.cursor_row < 0:
            return None
        return self.page_ids[min(table.cursor_row, len(self.page_ids) - 1)]

    # ------------------------------------------------------------------ actions

    def action_close(self) -> None:
        self.dismiss(None)

    def action_focus_search(self) -> None:
        self.query_one("#dataset-search", Input).focus()

    def action_next_page(self) -> None:
        if self.has_next:
            self.page_offset += PAGE_SIZE
            self._load_page()

    def action_previous_page(self) -> None:
        if self.page_offset > 0:
            self.page_offset = max(0, self.page_offset - PAGE_SIZE)
            self._load_page()

    @on(Input.Changed, "#dataset-search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.search = event.value
        self.page_offset = 0
        self._load_page(recount=True)

    @on(Input.Submitted, "#dataset-search")
    def _search_submitted(self) -> None:
        self._table().focus()

    @on(DataTable.RowSelected, "#dataset-table")
    def _row_selected(self) -> None:
        self.action_edit()

    def action_edit(self) -> None:
        example_id = self._highlighted_id()
        if example_id is None or self.store is None:
            return
        try:
            # Fresh from the store: the page may be older than the last change.
            example = self.store.get(example_id)
        except DB_ERRORS as exc:
            self._failed(exc)
            return
        def edited(result: CurateResult | None) -> None:
            if result is None or self.store is None:
                return
            if (result.instruction, result.response, result.system, result.context) == (
                    example.instruction, example.response, example.system, example.context):
                self.notify(f"Example #{example_id} is unchanged.", markup=False)
                return
            self._write(ExampleEdited(example_id), "update", example_id,
                        instruction=result.instruction, response=result.response,
                        system=result.system, context=result.context)

        self.app.push_screen(
            CurateModal(example.instruction, example.response, title=f"Edit example #{example_id}",
                        system=example.system, context=example.context),
            edited,
        )

    def action_delete(self) -> None:
        example_id = self._highlighted_id()
        if example_id is None:
            return
        def answered(yes: bool | None) -> None:
            if yes and self.store is not None:
                self._write(ExampleDeleted(example_id), "delete", example_id)

        self.app.push_screen(ConfirmModal(f"Delete example #{example_id}?"), answered)

    @work(thread=True, exit_on_error=False, group="dataset-write")
    def _write(self, done: Message, operation: str, *args, **kwargs) -> None:
        """`ExampleStore.<operation>(*args, **kwargs)` on a connection of its own, then post
        `done`; a failure raises and reaches `on_worker_state_changed`."""
        with ExampleStore(self.data_dir) as store:
            getattr(store, operation)(*args, **kwargs)
        self.post_message(done)

    def on_example_edited(self, message: ExampleEdited) -> None:
        # An edit can make the example stop matching the search: recount. The cursor stays
        # where it is now (the outside-changes poll may have reloaded the page already).
        self._load_page(self._table().cursor_row, recount=True)
        self.notify(f"Saved example #{message.example_id}.", markup=False)

    def on_example_deleted(self, message: ExampleDeleted) -> None:
        # The cursor's row now holds the example that followed the deleted one.
        self._load_page(self._table().cursor_row, recount=True)
        self.notify(f"Deleted example #{message.example_id}.", markup=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR and event.worker.group == "dataset-write":
            self._failed(event.worker.error)

    def _failed(self, exc: BaseException) -> None:
        """Say what went wrong and show the store as it is now (another process may have
        changed it under us)."""
        self.notify(str(exc), severity="error", markup=False)
        self._load_page(self._table().cursor_row, recount=True)
