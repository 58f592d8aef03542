"""The dataset screen: browse, search, edit and delete the curated examples.

The table shows one page (`PAGE_SIZE` rows) at a time, read with one
`ExampleStore.iter_examples(search, limit, offset)` query, so the screen opens at once on a
dataset of any size and never holds more than a page. `]` / `[` turn pages, typing in the
search box filters by text, `e` / Enter edits the highlighted example in the curate modal,
`d` / Delete removes it after a confirmation, Escape closes the screen. A conversation's
instruction cell starts with its number of turns and a mark for a system prompt; the curate
modal edits its system prompt and earlier turns too.

Nothing here reads or writes the database on the event loop. A search scans every example
that does not match (a tenth of a second on 50,000, more on a slow disk), and opening the
store waits while another process migrates it, so:
- each page is read by a thread worker on a connection of its own, which posts `PageRead`;
  search keystrokes wait `SEARCH_DELAY_S` for the user to pause, and a page asked for after
  another one wins (the older answer is dropped by its generation number). The old page
  stays on screen until the new one comes; the first shows "Loading examples…".
- how many examples match a search is counted by another worker (`MatchesCounted`).
- the example to edit is read fresh by a worker (`ExampleFetched`), and edits and deletes
  are written by workers, which wait while another process (a CLI import) holds the write
  lock; they post `ExampleEdited` / `ExampleDeleted`.
A failure (StoreError, sqlite3.Error, OSError: a locked, full, unreadable or removed
dataset) becomes one error notice and the screen keeps what it shows. The only database call
left on the event loop is the once-a-second `PRAGMA data_version` poll for changes made by
other processes: it reads the WAL index in shared memory and never waits for a writer.

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

from ...dataset.store import Example, ExampleStore, StoreError
from ...text import one_line, strip_control
from .confirm import ConfirmModal
from .curate import CurateModal, CurateResult
from .dataset_rows import PAGE_SIZE, read_page, row_cells

SEARCH_SHOWN_WIDTH = 30
# A search starts once typing pauses this long: one query per pause, not one per keystroke.
SEARCH_DELAY_S = 0.15
COUNT_DELAY_S = 0.25
# How often screens check whether another process (a second app, a CLI) changed the dataset:
# a PRAGMA read without I/O, so polling is cheaper than any notification would be.
OUTSIDE_CHANGES_POLL_S = 1.0
# A busy or broken database file surfaces as sqlite3.Error, not only as StoreError; a data
# folder that cannot be created or was replaced by a file, as OSError.
DB_ERRORS = (StoreError, sqlite3.Error, OSError)
LOADING_TEXT = "Loading examples…"
EMPTY_TEXT = ("No examples yet — save an answer from the chat with ctrl+s, or use "
              "`sftchat data add`.")
# Workers whose failure the screen reports (a failed count only shows "…").
PAGE_GROUP, FETCH_GROUP, WRITE_GROUP = "dataset-page", "dataset-fetch", "dataset-write"


@dataclass
class PageRead(Message):
    """A page worker's answer for the request numbered `generation`."""

    generation: int
    search: str
    offset: int
    rows: list[Example]
    total: int
    cursor_row: int
    recount: bool
    # The worker's connection, handed over when the screen had none yet (for its poll),
    # with the `outside_changes()` it read before the page.
    store: ExampleStore | None = None
    version: int | None = None


@dataclass
class MatchesCounted(Message):
    """The count worker finished: `count` examples match `search` (None: counting failed)."""

    generation: int
    search: str
    count: int | None


@dataclass
class ExampleFetched(Message):
    """The example to edit, read fresh from the store (the page may be older)."""

    example: Example


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
        # The event loop's connection, only for the outside-changes poll; a page worker
        # opens it (opening can wait for another process's lock) and hands it over.
        self.store: ExampleStore | None = None
        # What the user asked for (the search box as typed, the page turned to); the page
        # shown is the answer to the latest request, `shown_search` its search.
        self.search = ""
        self.page_offset = 0
        self.shown_search = ""
        self.page_ids: list[int] = []
        self.has_next = False
        self.total = 0
        # True until the first page (or the failure to read it) comes.
        self.loading = True
        # Bumped at every page request: the answer to an older one is dropped.
        self.page_generation = 0
        # Matches of the current search; None while the worker counts them.
        self.matches: int | None = None
        # Bumped at every recount, so a late answer for an older count is ignored.
        self.count_generation = 0
        self._count_timer: Timer | None = None
        self._search_timer: Timer | None = None

    def compose(self):
        yield Input(placeholder="Search instructions, inputs and responses…  (/ to focus)",
                    id="dataset-search")
        yield DataTable(id="dataset-table", cursor_type="row", zebra_stripes=True)
        yield Label(LOADING_TEXT, id="dataset-page")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#dataset-table", DataTable)
        for label in ("id", "instruction", "response", "source", "edited?"):
            table.add_column(label, key=label)
        self._load_page(recount=True)

    def _adopt(self, store: ExampleStore, version: int | None) -> None:
        """Keep a page worker's connection for the poll (another app or a CLI may change the
        dataset while this screen is open); close any other one handed over meanwhile."""
        if self.store is not None or not self.is_attached:
            store.close()
            return
        self.store = store
        self._outside_changes = version
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
        """Ask a worker for the page at `self.page_offset` of `self.search`, to show with the
        cursor on `cursor_row` (clamped); the shown page stays until it answers."""
        self.page_generation += 1
        self._read_page(self.page_generation, self.search, self.page_offset, cursor_row,
                        recount, keep=self.store is None)

    @work(thread=True, exclusive=True, group=PAGE_GROUP, exit_on_error=False)
    def _read_page(self, generation: int, search: str, offset: int, cursor_row: int,
                   recount: bool, keep: bool) -> None:
        """Read a page on a connection of its own (the event loop's is for its poll) and post
        it; a failure reaches `on_worker_state_changed`."""
        store = ExampleStore(self.data_dir)
        try:
            # Before the page: a change made while it is read is noticed by the poll.
            version = store.outside_changes()
            rows, offset, cursor_row = read_page(store, search, offset, cursor_row)
            total = store.count()
        except BaseException:
            store.close()
            raise
        kept = store if keep else None
        if kept is None:
            store.close()
        self.post_message(PageRead(generation, search, offset, rows, total, cursor_row,
                                   recount, kept, version))

    def on_page_read(self, message: PageRead) -> None:
        if message.store is not None:
            self._adopt(message.store, message.version)
        if message.generation != self.page_generation:
            return  # a newer page was asked for meanwhile
        self.loading = False
        search = message.search if message.search.strip() else None
        self.shown_search, self.page_offset, self.total = (message.search, message.offset,
                                                           message.total)
        rows = message.rows
        self.has_next = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        self.page_ids = [example.id for example in rows]

        table = self._table()
        table.clear()
        for example in rows:
            table.add_row(*row_cells(example), key=str(example.id))
        if rows:
            table.move_cursor(row=min(message.cursor_row, len(rows) - 1), animate=False)

        if search is None or message.recount:
            self._forget_count()
        if search is None:
            self.matches = self.total
        elif message.recount:
            if self.page_offset == 0 and not self.has_next:
                self.matches = len(rows)  # the whole result is on this page
            else:
                self.matches = None
                # Count a moment later, not at once: each count reads every match, and a
                # count for a search replaced meanwhile (an edit, a poll) is wasted.
                self._count_timer = self.set_timer(
                    COUNT_DELAY_S, partial(self._count_matches, self.count_generation, search))
        self._show_position()

    def _page_failed(self, exc: BaseException) -> None:
        """One notice; the page shown stays (nothing is lost), or the label says why there is
        none yet."""
        text = f"Cannot read the dataset: {exc}"
        self.notify(text, severity="error", markup=False)
        if self.loading:
            self.loading = False
            self._page_label().update(Text(strip_control(text)))

    def _forget_count(self) -> None:
        """Drop a pending or running count: its answer would be for an older search."""
        self.count_generation += 1
        if self._count_timer is not None:
            self._count_timer.stop()
            self._count_timer = None

    def _show_position(self) -> None:
        search = one_line(strip_control(self.shown_search), SEARCH_SHOWN_WIDTH)
        if not self.page_ids:
            if self.shown_search.strip():
                text = f"No example matches “{search}” ({self.total:,} examples in all)."
            else:
                text = EMPTY_TEXT
        else:
            first, last = self.page_offset + 1, self.page_offset + len(self.page_ids)
            if self.shown_search.strip():
                matches = "…" if self.matches is None else f"{self.matches:,}"
                text = (f"rows {first:,}–{last:,} of {matches} matching “{search}” "
                        f"({self.total:,} examples in all)")
            else:
                text = f"rows {first:,}–{last:,} of {self.total:,}"
        # Text, not a str: the search string is the user's and must not be read as markup.
        self._page_label().update(Text(text))

    @work(thread=True, exclusive=True, group="dataset-count", exit_on_error=False)
    def _count_matches(self, generation: int, search: str) -> None:
        # Its own connection: a long count must not hold up the page workers' reads.
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
        if (message.generation != self.count_generation
                or message.search != self.shown_search):
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
        # `has_next` is the shown page's: turning again before the next page comes may ask
        # past the end, and the worker then steps back to the last page.
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
        if self._search_timer is not None:
            self._search_timer.stop()
        self._search_timer = self.set_timer(SEARCH_DELAY_S, self._search_now)

    def _search_now(self) -> None:
        self._search_timer = None
        self._load_page(recount=True)

    @on(Input.Submitted, "#dataset-search")
    def _search_submitted(self) -> None:
        if self._search_timer is not None:  # Enter does not wait for the pause
            self._search_timer.stop()
            self._search_now()
        self._table().focus()

    @on(DataTable.RowSelected, "#dataset-table")
    def _row_selected(self) -> None:
        self.action_edit()

    def action_edit(self) -> None:
        example_id = self._highlighted_id()
        if example_id is not None:
            self._fetch_for_edit(example_id)

    @work(thread=True, exclusive=True, group=FETCH_GROUP, exit_on_error=False)
    def _fetch_for_edit(self, example_id: int) -> None:
        with ExampleStore(self.data_dir) as store:
            example = store.get(example_id)
        self.post_message(ExampleFetched(example))

    def on_example_fetched(self, message: ExampleFetched) -> None:
        if self.app.screen is not self:
            return  # closed meanwhile, or a modal (the edit asked for by a second `e`) is up
        example = message.example
        example_id = example.id

        def edited(result: CurateResult | None) -> None:
            if result is None:
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
            if yes:
                self._write(ExampleDeleted(example_id), "delete", example_id)

        self.app.push_screen(ConfirmModal(f"Delete example #{example_id}?"), answered)

    @work(thread=True, exit_on_error=False, group=WRITE_GROUP)
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
        if event.state is not WorkerState.ERROR:
            return
        error = event.worker.error
        if event.worker.group == PAGE_GROUP:
            self._page_failed(error)
        elif event.worker.group in (FETCH_GROUP, WRITE_GROUP):
            self._failed(error)

    def _failed(self, exc: BaseException) -> None:
        """Say what went wrong and show the store as it is now (another process may have
        changed it under us)."""
        self.notify(str(exc), severity="error", markup=False)
        self._load_page(self._table().cursor_row, recount=True)
