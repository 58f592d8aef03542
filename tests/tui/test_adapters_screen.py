"""The adapters screen under Pilot: order, the active mark, what each key returns, the empty
state, untrusted metadata, listing off the event loop (and its failures), and a snapshot.

The adapter folders here are hand-made metadata fixtures (adapter_config.json + sftchat.json
only, no weights): this screen only lists and chooses; loading real adapters is tested with
the engine and the trainer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from rich.text import Text
from textual.app import App
from textual.widgets import DataTable, Label

import sftchat.tui.screens.adapters
from sftchat.tui.screens.adapters import (
    EMPTY_TEXT,
    LOADING_TEXT,
    AdaptersScreen,
    format_created,
)
from tui_helpers import Gate, repaint, wait_until

SIZE = (120, 40)
NOT_DISMISSED = object()


class HostApp(App[None]):
    """Pushes the adapters screen at start and records what it dismisses with."""

    def __init__(self, adapters_dir: Path, active: str | None = None) -> None:
        super().__init__()
        self.adapters_dir, self.active = adapters_dir, active
        self.result: object = NOT_DISMISSED

    def on_mount(self) -> None:
        self.push_screen(AdaptersScreen(self.adapters_dir, self.active), self._on_dismissed)

    def _on_dismissed(self, result: str | None) -> None:
        self.result = result


def make_adapter(adapters_dir: Path, name: str, finished_at: str, base: str = "builtin",
                 example_ids: tuple[int, ...] = (1, 2, 3), final_loss: float | None = 0.5) -> None:
    """A hand-made adapter folder with just the metadata this screen reads."""
    folder = adapters_dir / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16}))
    (folder / "sftchat.json").write_text(json.dumps({
        "name": name,
        "base_model": {"model": base},
        "dataset": {"example_ids": list(example_ids)},
        "metrics": {"final_loss": final_loss, "steps": 10},
        "finished_at": finished_at,
    }))


@pytest.fixture
def utc(monkeypatch):
    """Local time is UTC for the test, so shown timestamps do not depend on the machine."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def adapters_dir(ws) -> Path:
    folder = ws / "adapters"
    # Names in an order that is neither alphabetical nor by time.
    make_adapter(folder, "beta", "2025-02-01T10:00:00.000+00:00", example_ids=(1, 2))
    make_adapter(folder, "alpha", "2025-03-01T10:00:00.000+00:00", final_loss=0.0123456)
    make_adapter(folder, "gamma", "2025-01-01T10:00:00.000+00:00", final_loss=None)
    return folder


def table(app: App) -> DataTable:
    return app.screen.query_one("#adapters-table", DataTable)


def names(app: App) -> list[str]:
    return [str(table(app).get_row_at(row)[0]) for row in range(table(app).row_count)]


def on_adapters(app: App) -> bool:
    return isinstance(app.screen, AdaptersScreen)


def status(app: App) -> str:
    return str(app.screen.query_one("#adapters-status", Label).content)


def listed(app: App) -> bool:
    """The screen is up and its listing worker has answered (rows, empty, or an error)."""
    return on_adapters(app) and not app.screen.loading


async def test_lists_newest_first_with_the_active_one_marked(adapters_dir, utc):
    app = HostApp(adapters_dir, active="beta")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_adapters(app) and table(app).row_count == 3)
        assert names(app) == ["  alpha", "● beta", "  gamma"]
        assert table(app).cursor_row == 1  # starts on the active adapter
        alpha = [str(cell) for cell in table(app).get_row_at(0)]
        # name, created, examples, data since the one before, parent, replay, loss, review,
        # base model (these test adapters have no train.jsonl: no data to compare).
        assert alpha == ["  alpha", "2025-03-01 10:00", "3", "+0 ~0 -0", "—", "—", "0.0123",
                         "—", "builtin"]
        assert [str(cell) for cell in table(app).get_row_at(2)][6] == "—"  # no loss recorded
        active = str(app.screen.query_one("#adapters-active", Label).content)
        assert active == "Active: beta"


async def test_enter_returns_the_highlighted_name(adapters_dir):
    app = HostApp(adapters_dir, active=None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_adapters(app) and table(app).row_count == 3)
        assert "●" not in "".join(names(app))
        await pilot.press("down", "down", "enter")
        await wait_until(pilot, lambda: app.result is not NOT_DISMISSED)
        assert app.result == "gamma"
        assert not on_adapters(app)


@pytest.mark.parametrize("active, keys, expected", [
    ("gamma", ("up", "u"), "beta"),      # u uses the highlighted adapter
    ("alpha", ("b",), "none"),           # b: the base model
    ("alpha", ("escape",), None),        # escape: change nothing
    ("alpha", ("p",), "previous"),       # p: roll back to what answered before
])
async def test_keys_dismiss_with_the_choice(adapters_dir, active, keys, expected):
    app = HostApp(adapters_dir, active=active)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_adapters(app) and table(app).row_count == 3)
        await pilot.press(*keys)
        await wait_until(pilot, lambda: app.result is not NOT_DISMISSED)
        assert app.result == expected
        assert not on_adapters(app)


async def test_no_adapters_shows_how_to_train_one(ws):
    app = HostApp(ws / "adapters", active=None)  # the folder does not even exist
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: listed(app))
        await pilot.pause()  # the empty table's removal
        empty = status(app)
        assert empty == "No adapters yet — train one with ctrl+t or /train"
        assert empty == EMPTY_TEXT
        assert not app.screen.query(DataTable)
        await pilot.press("enter", "u")  # nothing to choose: stays open
        await pilot.pause()
        assert app.result is NOT_DISMISSED and on_adapters(app)
        await pilot.press("b")
        await wait_until(pilot, lambda: app.result is not NOT_DISMISSED)
        assert app.result == "none"


async def test_untrusted_metadata_is_shown_literally(ws):
    folder = ws / "adapters"
    make_adapter(folder, "odd", "not a date", base="[bold]evil[/bold]\x1b[31m model")
    app = HostApp(folder, active=None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: on_adapters(app) and table(app).row_count == 1)
        row = table(app).get_row_at(0)
        assert all(isinstance(cell, Text) and not cell.spans for cell in row)
        assert str(row[8]) == "[bold]evil[/bold] model"
        assert str(row[1]) == "not a date"


# ---------------------------------------------------------------------- off the event loop


async def test_listing_runs_off_the_event_loop(adapters_dir, monkeypatch):
    """Issue 20: comparing every adapter's train.jsonl used to run in compose, freezing the
    app for as long as it took. While the listing is held the dialog says it is loading and
    keys are handled; released, the table fills."""
    gate = Gate()
    monkeypatch.setattr(sftchat.tui.screens.adapters, "describe_all",
                        gate.wrap(sftchat.tui.screens.adapters.describe_all))
    app = HostApp(adapters_dir, active="beta")
    async with app.run_test(size=SIZE) as pilot:
        try:
            await wait_until(pilot, gate.entered.is_set, timeout=10, what="the listing")
            await wait_until(pilot, lambda: on_adapters(app), timeout=5, what="the dialog")
            await pilot.press("u")  # nothing listed yet: nothing to use, the dialog stays
            await pilot.pause()
            assert not gate.timed_out, "the event loop was blocked until the listing gave up"
            assert app.result is NOT_DISMISSED and on_adapters(app)
            assert status(app) == LOADING_TEXT
            assert table(app).row_count == 0
        finally:
            gate.release.set()
        await wait_until(pilot, lambda: table(app).row_count == 3, timeout=10,
                         what="the rows")
        assert names(app) == ["  alpha", "● beta", "  gamma"]
        assert not app.screen.query_one("#adapters-status", Label).display
        assert table(app).cursor_row == 1
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.result is not NOT_DISMISSED)
        assert app.result == "beta"


async def test_closing_while_listing_drops_the_late_list(adapters_dir, monkeypatch):
    gate = Gate()
    monkeypatch.setattr(sftchat.tui.screens.adapters, "describe_all",
                        gate.wrap(sftchat.tui.screens.adapters.describe_all))
    app = HostApp(adapters_dir, active=None)
    async with app.run_test(size=SIZE) as pilot:
        try:
            await wait_until(pilot, gate.entered.is_set, timeout=10, what="the listing")
            await pilot.press("escape")
            await wait_until(pilot, lambda: app.result is not NOT_DISMISSED, timeout=5,
                             what="the dialog to close")
            assert not gate.timed_out
        finally:
            gate.release.set()
        await wait_until(pilot, lambda: gate.returned.is_set() and not any(
            worker.group == "adapters-list" for worker in app.workers), timeout=10,
            what="the late list")
        await pilot.pause()
        assert app.result is None and not on_adapters(app)
    # Leaving run_test re-raises anything the app failed with: the late list did nothing.


async def test_an_unreadable_snapshot_is_said_and_the_dialog_still_works(adapters_dir):
    """A train.jsonl that is not UTF-8 (a disk error, a bad copy) used to escape compose as a
    UnicodeDecodeError traceback that took the app down."""
    (adapters_dir / "alpha" / "train.jsonl").write_bytes(b'{"id": 1, "text": "\xff\xfe"}\n')
    app = HostApp(adapters_dir, active="alpha")
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: listed(app), timeout=10, what="the listing")
        await pilot.pause()
        text = status(app)
        assert text.startswith(f"Cannot list the adapters in {adapters_dir}: ")
        assert "corrupted train.jsonl" in text and "sftchat adapters rm alpha" in text
        assert not app.screen.query(DataTable)
        await pilot.press("b")
        await wait_until(pilot, lambda: app.result is not NOT_DISMISSED)
        assert app.result == "none"


async def test_a_corrupted_snapshot_is_said_with_its_fix(adapters_dir):
    (adapters_dir / "beta" / "train.jsonl").write_text("{not json\n", encoding="utf-8")
    app = HostApp(adapters_dir, active=None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: listed(app), timeout=10, what="the listing")
        assert "sftchat adapters rm beta" in status(app)
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.result is not NOT_DISMISSED)
        assert app.result is None


def test_created_is_shown_in_local_time(monkeypatch):
    monkeypatch.setenv("TZ", "JST-9")  # POSIX form: needs no tz database
    time.tzset()
    try:
        assert format_created("2025-03-01T10:00:00.000+00:00") == "2025-03-01 19:00"
        assert format_created("") == "—"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_adapters_screen_snapshot(snap_compare, ws, utc):
    folder = ws / "adapters"
    make_adapter(folder, "first", "2025-02-01T10:00:00.000+00:00", example_ids=(1, 2, 3, 4, 5),
                 final_loss=0.4321)
    make_adapter(folder, "second", "2025-03-01T08:30:00.000+00:00",
                 example_ids=tuple(range(1, 13)), final_loss=0.0457)

    async def ready(pilot) -> None:
        await wait_until(pilot, lambda: on_adapters(pilot.app)
                         and table(pilot.app).row_count == 2)
        await repaint(pilot)

    assert snap_compare(HostApp(folder, active="first"), terminal_size=SIZE, run_before=ready)
