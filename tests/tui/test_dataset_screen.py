"""The dataset screen under Pilot, on the real store: paging through 50,000 examples, search
with its match count, edit/delete through the real modals, untrusted text, reads that never
hold up the event loop (and their failures), and a snapshot."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest
from rich.text import Text
from textual.app import App
from textual.widgets import Checkbox, Input, Label, TextArea

from sftchat.conversation import Turn
from sftchat.dataset.store import ExampleNotFound, ExampleStore
from sftchat.tui.screens.confirm import ConfirmModal
from sftchat.tui.screens.curate import CurateModal
import sftchat.tui.screens.dataset
from sftchat.tui.screens.dataset import (
    LOADING_TEXT,
    PAGE_GROUP,
    PAGE_SIZE,
    DatasetScreen,
    MatchesCounted,
)
from tui_helpers import DatasetHostApp as HostApp
from tui_helpers import Gate, repaint, showing, wait_until
from tui_helpers import dataset_table as table

SIZE = (120, 40)
BIG = 50_000
# Every tenth example of the big dataset is about cats (5,000 of them: more than a page, so
# the count comes from the worker); three are needles.
NEEDLES = (7, 25_000, 49_999)

UNTRUSTED = "[bold]x[/bold] [link=http://e.vil]y[/link] \x1b[31mred"
UNTRUSTED_SHOWN = "[bold]x[/bold] [link=http://e.vil]y[/link] red"


def page_text(app: App) -> str:
    return str(app.screen.query_one("#dataset-page", Label).content)


def shown_ids(app: App) -> list[int]:
    return [int(row.key.value) for row in table(app).ordered_rows]


def on_dataset(app: App) -> bool:
    return isinstance(app.screen, DatasetScreen)


def loaded(app: App) -> bool:
    """The dataset screen is up and its first page (or the failure to read it) has come."""
    return on_dataset(app) and not app.screen.loading


def search_box(app: App) -> Input:
    return app.screen.query_one("#dataset-search", Input)


def reads_done(app: App) -> bool:
    """No page worker is still reading (each posts its page before it finishes)."""
    return not any(worker.group == PAGE_GROUP for worker in app.workers)


def page_query(search: str | None):
    """For `Gate.wrap(ExampleStore.iter_examples, when=...)`: a page read for `search`
    (the match count reads without a limit)."""
    return lambda store, query=None, limit=None, offset=0: (
        query == search and limit == PAGE_SIZE + 1)


@pytest.fixture
def data_dir(ws) -> Path:
    return ws / "data"


@pytest.fixture
def big_dataset(data_dir) -> Path:
    def instruction(i: int) -> str:
        if i in NEEDLES:
            return f"Find the needle {i}"
        return f"Question {i} about {'cats' if i % 10 == 1 else 'dogs'}"

    with ExampleStore(data_dir) as store:
        # One transaction for all of them: a few tenths of a second.
        store.add_many((instruction(i), "", f"Answer {i}.", None, "cli")
                       for i in range(1, BIG + 1))
    return data_dir


@pytest.fixture
def small_dataset(data_dir) -> Path:
    with ExampleStore(data_dir) as store:
        store.add_many([
            ("First question", "", "First answer", None, "cli"),
            ("Second question", "", "Second answer", "Second answer, as the model said", "chat"),
            ("Third question", "", "Third answer", None, "cli"),
        ])
    return data_dir


def stored(data_dir: Path, example_id: int):
    with ExampleStore(data_dir) as store:
        return store.get(example_id)


# ---------------------------------------------------------------------- paging and search


async def test_pages_through_50000_examples(big_dataset, monkeypatch):
    # Record every query: each must read one page, never the dataset, and none may run on
    # the event loop (the tests' main thread).
    limits, on_event_loop = [], []
    iter_examples = ExampleStore.iter_examples

    def recording(self, search=None, limit=None, offset=0):
        limits.append(limit)
        if threading.current_thread() is threading.main_thread():
            on_event_loop.append(limit)
        return iter_examples(self, search, limit, offset)

    monkeypatch.setattr(ExampleStore, "iter_examples", recording)
    app = HostApp(big_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count > 0)
        assert table(app).row_count == PAGE_SIZE
        assert shown_ids(app) == list(range(1, PAGE_SIZE + 1))
        assert page_text(app) == "rows 1–200 of 50,000"

        await pilot.press("right_square_bracket")
        await wait_until(pilot, lambda: page_text(app) == "rows 201–400 of 50,000")
        assert shown_ids(app) == list(range(201, 401))
        assert table(app).cursor_row == 0

        await pilot.press("right_square_bracket", "right_square_bracket")
        await wait_until(pilot, lambda: page_text(app) == "rows 601–800 of 50,000")
        assert shown_ids(app)[0] == 601

        await pilot.press("left_square_bracket")
        await wait_until(pilot, lambda: page_text(app) == "rows 401–600 of 50,000")
        assert shown_ids(app) == list(range(401, 601))

        await pilot.press("left_square_bracket", "left_square_bracket", "left_square_bracket")
        await wait_until(pilot, lambda: page_text(app) == "rows 1–200 of 50,000")
        assert shown_ids(app)[0] == 1  # `[` on the first page stays there
        assert table(app).row_count == PAGE_SIZE
    assert limits and all(limit is not None and limit <= PAGE_SIZE + 1 for limit in limits)
    assert on_event_loop == []


async def test_search_narrows_rows_and_counts_matches(big_dataset):
    app = HostApp(big_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count > 0)
        await pilot.press("slash")
        assert app.focused is app.screen.query_one("#dataset-search", Input)
        await pilot.press(*"needle")
        await wait_until(pilot, lambda: shown_ids(app) == list(NEEDLES))
        assert page_text(app) == "rows 1–3 of 3 matching “needle” (50,000 examples in all)"

        # More matches than a page: the rows come at once, the count from the worker.
        app.screen.query_one("#dataset-search", Input).value = ""
        await pilot.press(*"CATS")  # search ignores case
        await wait_until(pilot, lambda: "of 5,000 matching" in page_text(app))
        assert page_text(app) == "rows 1–200 of 5,000 matching “CATS” (50,000 examples in all)"
        assert shown_ids(app) == list(range(1, 2000, 10))

        # Enter leaves the search box for the table, where `]` turns the page.
        await pilot.press("enter")
        assert app.focused is table(app)
        await pilot.press("right_square_bracket")
        await wait_until(pilot, lambda: page_text(app).startswith("rows 201–400 of 5,000"))
        assert shown_ids(app) == list(range(2001, 4000, 10))

        app.screen.query_one("#dataset-search", Input).value = ""
        await pilot.press("slash", *"zzz")
        await wait_until(pilot, lambda: table(app).row_count == 0)
        assert page_text(app) == "No example matches “zzz” (50,000 examples in all)."


async def test_a_count_for_a_replaced_search_is_dropped(big_dataset):
    app = HostApp(big_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count > 0)
        search = app.screen.query_one("#dataset-search", Input)
        search.value = "cats"  # more than a page: a count is scheduled
        await wait_until(pilot, lambda: "matching “cats”" in page_text(app))
        cats_count = app.screen.count_generation
        search.value = "needle"  # one page: counted at once; the cats count must not land
        await wait_until(pilot, lambda: shown_ids(app) == list(NEEDLES))
        # Whether or not the real cats count had started, its answer arriving now (late) is
        # exactly this message: it must be dropped.
        app.screen.post_message(MatchesCounted(cats_count, "cats", 5_000))
        await pilot.pause()
        assert page_text(app) == "rows 1–3 of 3 matching “needle” (50,000 examples in all)"


# ---------------------------------------------------------------------- off the event loop
# Issue 20: the first page and every search keystroke used to be read on the event loop; with
# thousands of examples typing stalled the app. Each test holds a read with a Gate: the app
# must answer keys meanwhile (with the old code the hold froze it until the gate gave up).


async def test_the_first_page_is_read_off_the_event_loop(big_dataset, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(ExampleStore, "iter_examples", gate.wrap(
        ExampleStore.iter_examples, when=page_query(None)))
    app = HostApp(big_dataset)
    async with app.run_test(size=SIZE) as pilot:
        try:
            await wait_until(pilot, gate.entered.is_set, timeout=10, what="the first read")
            await wait_until(pilot, lambda: on_dataset(app), timeout=5, what="the screen")
            assert page_text(app) == LOADING_TEXT and table(app).row_count == 0
            await pilot.press("slash")
            assert app.focused is search_box(app)
            assert not gate.timed_out, "the event loop was blocked until the read gave up"
            assert not gate.held_on_event_loop
        finally:
            gate.release.set()
        await wait_until(pilot, lambda: table(app).row_count == PAGE_SIZE, timeout=10,
                         what="the first page")
        assert shown_ids(app) == list(range(1, PAGE_SIZE + 1))
        assert page_text(app) == "rows 1–200 of 50,000"


async def test_a_search_is_read_off_the_event_loop(big_dataset, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(ExampleStore, "iter_examples", gate.wrap(
        ExampleStore.iter_examples, when=page_query("needle")))
    app = HostApp(big_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: loaded(app) and table(app).row_count > 0)
        try:
            search_box(app).value = "needle"
            await wait_until(pilot, gate.entered.is_set, timeout=10, what="the search")
            await pilot.press("down")  # the table still has the focus, and its page
            assert table(app).cursor_row == 1
            assert not gate.timed_out, "the event loop was blocked until the search gave up"
            assert not gate.held_on_event_loop
            assert shown_ids(app) == list(range(1, PAGE_SIZE + 1))
            assert page_text(app) == "rows 1–200 of 50,000"
        finally:
            gate.release.set()
        await wait_until(pilot, lambda: shown_ids(app) == list(NEEDLES), timeout=10,
                         what="the search's rows")
        assert page_text(app) == "rows 1–3 of 3 matching “needle” (50,000 examples in all)"


async def test_typing_runs_one_search_once_the_keys_pause(big_dataset, monkeypatch):
    # A pause far longer than Pilot takes between keys, so the count cannot depend on load.
    monkeypatch.setattr(sftchat.tui.screens.dataset, "SEARCH_DELAY_S", 1.0)
    searched = []
    iter_examples = ExampleStore.iter_examples

    def recording(self, search=None, limit=None, offset=0):
        if search is not None and limit is not None:
            searched.append(search)
        return iter_examples(self, search, limit, offset)

    monkeypatch.setattr(ExampleStore, "iter_examples", recording)
    app = HostApp(big_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: loaded(app) and table(app).row_count > 0)
        await pilot.press("slash", *"needle")
        await wait_until(pilot, lambda: shown_ids(app) == list(NEEDLES), timeout=10,
                         what="the search's rows")
        assert searched == ["needle"]


async def test_the_page_of_a_replaced_search_is_dropped(big_dataset, monkeypatch):
    """The "cats" page is held until "needle" has been shown: arriving late, it must not
    replace the page the search box asks for."""
    gate = Gate()
    monkeypatch.setattr(ExampleStore, "iter_examples", gate.wrap(
        ExampleStore.iter_examples, when=page_query("cats")))
    app = HostApp(big_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: loaded(app) and table(app).row_count > 0)
        try:
            search_box(app).value = "cats"
            await wait_until(pilot, gate.entered.is_set, timeout=10, what="the cats search")
            search_box(app).value = "needle"
            await wait_until(pilot, lambda: shown_ids(app) == list(NEEDLES), timeout=10,
                             what="the needle search")
            assert not gate.timed_out
        finally:
            gate.release.set()
        await wait_until(pilot, lambda: gate.returned.is_set() and reads_done(app),
                         timeout=10, what="the late cats page")
        await pilot.pause()  # where the late page would (wrongly) land
        assert shown_ids(app) == list(NEEDLES)
        assert page_text(app) == "rows 1–3 of 3 matching “needle” (50,000 examples in all)"


async def test_the_example_to_edit_is_read_off_the_event_loop(small_dataset, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(ExampleStore, "get", gate.wrap(ExampleStore.get))
    app = HostApp(small_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: loaded(app) and table(app).row_count == 3)
        try:
            await pilot.press("down", "e")
            await wait_until(pilot, gate.entered.is_set, timeout=10, what="the read")
            await pilot.press("down")
            assert table(app).cursor_row == 2 and on_dataset(app)
            assert not gate.timed_out, "the event loop was blocked until the read gave up"
        finally:
            gate.release.set()
        await wait_until(pilot, lambda: showing(app, CurateModal), timeout=10,
                         what="the edit modal")
        assert str(app.screen.query_one("#curate-title", Label).content) == "Edit example #2"


# ---------------------------------------------------------------------- disk errors


async def test_a_failed_search_is_one_notice_and_the_page_stays(big_dataset, monkeypatch):
    """A read that fails (here an I/O error) used to escape the keystroke's handler as a
    traceback that took the app down."""
    iter_examples = ExampleStore.iter_examples

    def failing(self, search=None, limit=None, offset=0):
        if search == "boom":
            raise OSError(errno.EIO, "Input/output error")
        return iter_examples(self, search, limit, offset)

    monkeypatch.setattr(ExampleStore, "iter_examples", failing)
    app = HostApp(big_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: loaded(app) and table(app).row_count > 0)
        await pilot.press("down")
        search_box(app).value = "boom"
        await wait_until(pilot, lambda: app.errors and reads_done(app), timeout=10,
                         what="the notice")
        await pilot.pause()
        assert app.errors == ["Cannot read the dataset: [Errno 5] Input/output error"]
        # Nothing lost: the page, its position and the cursor are as they were.
        assert shown_ids(app) == list(range(1, PAGE_SIZE + 1))
        assert page_text(app) == "rows 1–200 of 50,000"
        assert table(app).cursor_row == 1
        assert search_box(app).value == "boom"
        # And the screen goes on: the next search shows its rows.
        search_box(app).value = "needle"
        await wait_until(pilot, lambda: shown_ids(app) == list(NEEDLES), timeout=10,
                         what="the next search")
        assert len(app.errors) == 1


async def test_a_dataset_that_cannot_be_opened_is_said_and_the_screen_recovers(data_dir):
    """The data folder is a file (a bad sync, a user's mistake): opening the store raises
    FileExistsError, an OSError, which used to escape on_mount as a traceback."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.write_text("not a folder")
    app = HostApp(data_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: loaded(app), timeout=10, what="the failure")
        await pilot.pause()
        assert len(app.errors) == 1
        assert app.errors[0].startswith("Cannot read the dataset: ")
        assert "File exists" in app.errors[0]
        assert page_text(app) == app.errors[0]
        assert table(app).row_count == 0
        # Fixed outside the app: the next search reads the dataset.
        data_dir.unlink()
        with ExampleStore(data_dir) as store:
            store.add("Find the needle", "Here.", source="cli")
        await pilot.press("slash", *"needle", "enter")
        await wait_until(pilot, lambda: shown_ids(app) == [1], timeout=10,
                         what="the recovered dataset")
        assert page_text(app) == "rows 1–1 of 1 matching “needle” (1 examples in all)"
        assert app.screen.store is not None  # and it watches for outside changes again
        assert len(app.errors) == 1
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.closed)


# ---------------------------------------------------------------------- edit and delete


async def test_edit_saves_through_the_curate_modal(small_dataset):
    app = HostApp(small_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count == 3)
        await pilot.press("down", "e")
        await wait_until(pilot, lambda: showing(app, CurateModal))
        modal = app.screen
        assert str(modal.query_one("#curate-title", Label).content) == "Edit example #2"
        response = modal.query_one("#curate-response", TextArea)
        assert app.focused is response
        assert response.text == "Second answer"

        await pilot.press("f7", *"Fixed answer", "ctrl+s")  # F7: select all in TextArea
        await wait_until(pilot, lambda: on_dataset(app))
        # The write runs in a worker; its confirmation comes once the table is refreshed.
        await wait_until(pilot, lambda: "Saved example #2." in app.notes, what="the save")
        example = stored(small_dataset, 2)
        assert example.response == "Fixed answer"
        assert example.instruction == "Second question"
        assert example.original_response == "Second answer, as the model said"

        # Refreshed in place, cursor where it was, and a confirmation.
        assert str(table(app).get_row_at(1)[2]) == "Fixed answer"
        assert table(app).cursor_row == 1


async def test_edit_a_conversation_shows_and_saves_its_system_prompt_and_turns(data_dir):
    """Issue 19: a stored conversation opens with its system prompt and earlier turns (learn
    flags as stored); an earlier turn edited, another dropped, the system prompt cleared."""
    context = (Turn("Name a river.", "The Nile.", learn=True), Turn("Longer?", "Yes."))
    with ExampleStore(data_dir) as store:
        store.add("Where is it?", "In Africa.", system="Be brief.", context=context)
    app = HostApp(data_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count == 1)
        assert str(table(app).get_row_at(0)[1]).startswith("[3 turns, system] Where is it?")
        await pilot.press("e")
        await wait_until(pilot, lambda: showing(app, CurateModal))
        modal = app.screen
        assert modal.query_one("#curate-system", TextArea).text == "Be brief."
        assert modal.query_one("#curate-answer-0", TextArea).text == "The Nile."
        assert modal.query_one("#curate-learn-0", Checkbox).value
        assert not modal.query_one("#curate-learn-1", Checkbox).value
        assert app.focused is modal.query_one("#curate-response", TextArea)
        # Unchanged: nothing is written.
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: "Example #1 is unchanged." in app.notes)
        await pilot.press("e")
        await wait_until(pilot, lambda: showing(app, CurateModal))
        modal = app.screen
        modal.query_one("#curate-answer-0", TextArea).focus()
        await pilot.press("f7", *"The Amazon.")
        modal.query_one("#curate-keep-1", Checkbox).focus()
        await pilot.press("space")
        modal.query_one("#curate-system", TextArea).focus()
        await pilot.press("f7", "backspace", "ctrl+s")
        await wait_until(pilot, lambda: "Saved example #1." in app.notes, what="the save")
    example = stored(data_dir, 1)
    assert (example.instruction, example.response, example.system) == (
        "Where is it?", "In Africa.", "")
    assert example.context == (Turn("Name a river.", "The Amazon.", learn=True),)


async def test_enter_edits_and_escape_cancels(small_dataset):
    before = stored(small_dataset, 3)
    app = HostApp(small_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count == 3)
        await pilot.press("down", "down", "enter")
        await wait_until(pilot, lambda: showing(app, CurateModal))
        assert str(app.screen.query_one("#curate-title", Label).content) == "Edit example #3"
        await pilot.press("f7", *"thrown away", "escape")
        await wait_until(pilot, lambda: on_dataset(app))
        await pilot.pause()
        assert stored(small_dataset, 3) == before  # same text, same updated_at
        assert str(table(app).get_row_at(2)[2]) == "Third answer"
        assert not any(note.startswith("Saved") for note in app.notes)


async def test_delete_confirmed_removes_the_example(small_dataset):
    app = HostApp(small_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count == 3)
        await pilot.press("down", "d")
        await wait_until(pilot, lambda: showing(app, ConfirmModal))
        assert str(app.screen.query_one("#confirm-question", Label).content) == \
            "Delete example #2?"
        await pilot.press("y")
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count == 2)
        with pytest.raises(ExampleNotFound):
            stored(small_dataset, 2)
        assert shown_ids(app) == [1, 3]
        assert table(app).cursor_row == 1  # now on the example that followed
        assert page_text(app) == "rows 1–2 of 2"
        assert "Deleted example #2." in app.notes


async def test_delete_declined_keeps_the_example(small_dataset):
    app = HostApp(small_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count == 3)
        await pilot.press("delete")
        await wait_until(pilot, lambda: showing(app, ConfirmModal))
        await pilot.press("n")
        await wait_until(pilot, lambda: on_dataset(app))
        await pilot.pause()
        assert stored(small_dataset, 1).response == "First answer"
        assert shown_ids(app) == [1, 2, 3]
        assert not any(note.startswith("Deleted") for note in app.notes)


async def test_deleting_the_last_row_of_the_last_page_steps_back(data_dir):
    with ExampleStore(data_dir) as store:
        store.add_many((f"q{i}", "", f"a{i}", None, "cli") for i in range(PAGE_SIZE + 1))
    app = HostApp(data_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count > 0)
        await pilot.press("right_square_bracket")
        await wait_until(pilot, lambda: page_text(app) == "rows 201–201 of 201")
        await pilot.press("d")
        await wait_until(pilot, lambda: showing(app, ConfirmModal))
        await pilot.press("y")
        await wait_until(pilot, lambda: on_dataset(app) and page_text(app) == "rows 1–200 of 200")
        assert table(app).cursor_row == PAGE_SIZE - 1


async def test_escape_closes_the_screen_and_its_store(small_dataset):
    app = HostApp(small_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count == 3)
        screen = app.screen
        assert screen.store is not None
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.closed)
        assert not on_dataset(app)
        await wait_until(pilot, lambda: screen.store is None)


async def test_empty_dataset_says_how_to_add_examples(data_dir):
    app = HostApp(data_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: loaded(app))
        assert table(app).row_count == 0
        assert page_text(app).startswith("No examples yet")
        await pilot.press("e", "d", "right_square_bracket")  # nothing to act on: no-ops
        await pilot.pause()
        assert on_dataset(app)


# ---------------------------------------------------------------------- untrusted text


async def test_untrusted_text_is_shown_literally(data_dir):
    with ExampleStore(data_dir) as store:
        store.add("[red]instr[/red]", UNTRUSTED, source="import:\x1b]0;title\x07x.json")
    app = HostApp(data_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count == 1)
        _, instruction, response, source, _ = table(app).get_row_at(0)
        for cell in (instruction, response, source):
            assert isinstance(cell, Text) and not cell.spans
        assert str(instruction) == "[red]instr[/red]"
        assert str(response) == UNTRUSTED_SHOWN
        assert str(source) == "import:x.json"
        # And as drawn on screen: line 0 is the header, line 1 the first row (drawn once the
        # table has laid out the row its worker added).
        await wait_until(pilot, lambda: table(app).render_line(1).text.strip() != "",
                         timeout=10, what="the row drawn")
        drawn = table(app).render_line(1).text
        assert UNTRUSTED_SHOWN in drawn and "\x1b" not in drawn


# ---------------------------------------------------------------------- snapshot


def test_dataset_screen_snapshot(snap_compare, data_dir):
    with ExampleStore(data_dir) as store:
        store.add_many([
            ("What is the capital of France?", "", "Paris.", None, "cli"),
            ("Say hello in Japanese.", "", "こんにちは！", "Hello!", "chat"),
            ("Name three primary colors.", "", "Red, yellow and blue.", None, "chat"),
            ("Summarise this paragraph in one sentence, keeping the tone and the names",
             "A long paragraph",
             "A very long answer that is cut to the width of the column with an ellipsis",
             None, "import:alpaca.json"),
            ("Give me a smiley.", "", "🙂😀", "🙂", "chat"),
        ])

    async def ready(pilot) -> None:
        from textual.widgets._footer import FooterKey

        # The rows, and the footer's keys (composed after the screen's focus settles: on a
        # quiet machine the rows can be there first).
        await wait_until(pilot, lambda: on_dataset(pilot.app)
                         and table(pilot.app).row_count == 5
                         and len(pilot.app.screen.query(FooterKey)) >= 6)
        await repaint(pilot)

    assert snap_compare(HostApp(data_dir), terminal_size=SIZE, run_before=ready)


async def test_changes_made_by_another_process_appear_with_the_cursor_kept(small_dataset):
    """A second app or a CLI curating into the same workspace: the open page follows."""
    app = HostApp(small_dataset)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_dataset(app) and table(app).row_count == 3)
        await pilot.press("down")
        # Its own connection, as another process has.
        with ExampleStore(small_dataset) as elsewhere:
            new_id = elsewhere.add("Added elsewhere?", "Yes.", source="cli")
            elsewhere.delete(3)
        await wait_until(pilot, lambda: shown_ids(app) == [1, 2, new_id], timeout=10,
                         what="the page to follow the other connection's changes")
        assert table(app).cursor_row == 1
        assert app.screen.total == 3
