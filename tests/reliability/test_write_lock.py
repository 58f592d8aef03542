"""Another process holding the dataset's write lock never freezes the interface (issue 11).

A `sftchat data import` writes its rows in one transaction; while it runs, every other writer
waits for SQLite's lock. The stand-in here is a second process that opens the real store file,
starts the same kind of transaction (BEGIN IMMEDIATE + an insert), and holds it until the test
says so — the only way to hold the lock for a known time; a real import of a big file would
hold it for however long this machine takes.

While the lock is held the app keeps answering keys; the save (or the edit, or the delete)
waits in a worker, the chat says why it is slow, and it lands once the lock is released. If a
write ran on the event loop, the loop would block inside SQLite's busy wait: the keys pressed
meanwhile would only arrive after the holder gave up (its `HOLD_S` is shorter than the
store's busy timeout), which the test sees as the lock no longer held.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from sftchat.dataset.store import DB_NAME, ExampleStore
from sftchat.tui.screens.confirm import ConfirmModal
from sftchat.tui.screens.curate import CurateModal
from sftchat.tui.screens.dataset import DatasetScreen
from sftchat.tui.widgets.prompt_input import PromptInput
from sftchat.tui.widgets.status_line import StatusLine
from tui.tui_helpers import (DatasetHostApp, ask, dataset_table, make_workspace, recording_app,
                             settings_for, toasts, showing, wait_until)

SIZE = (120, 40)
# The holder commits by itself after this long (well under the store's 30 s busy timeout).
HOLD_S = 20

HOLDER = textwrap.dedent(f"""
    import select, sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO examples (instruction, input, response, source, created_at, "
               "updated_at) VALUES ('Imported?', '', 'Imported.', 'import:big.jsonl', "
               "?, ?)", (time.time(), time.time()))
    print("locked", flush=True)
    select.select([sys.stdin], [], [], {HOLD_S})
    db.execute("COMMIT")
    print("released", flush=True)
""")


class LockHolder:
    """A separate process inside a write transaction on `data_dir`'s store until `release()`."""

    def __init__(self, data_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(data_dir / DB_NAME)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert self.process.stdout.readline().strip() == "locked"

    @property
    def holding(self) -> bool:
        return self.process.poll() is None

    def release(self) -> None:
        if self.holding:
            self.process.stdin.write("go\n")
            self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "released"
        self.process.wait(timeout=10)


async def test_saving_while_another_process_writes_keeps_the_chat_responsive(tmp_path):
    workspace = make_workspace(tmp_path / "ws", max_new_tokens=12)
    data_dir = workspace / "data"
    ExampleStore(data_dir).close()
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await ask(pilot, "What is a lock?")
        holder = LockHolder(data_dir)
        try:
            await pilot.press("ctrl+s")
            await wait_until(pilot, lambda: showing(app, CurateModal),
                             what="the curate modal")
            await pilot.press("f7", *"A lock is held.", "ctrl+s")
            await wait_until(pilot, lambda: not isinstance(app.screen, CurateModal),
                             what="the modal to close")
            # The interface answers keys while the save waits for the lock.
            await pilot.press(*"still typing")
            assert app.screen.query_one(PromptInput).text == "still typing"
            await wait_until(pilot, lambda: any("the dataset is busy" in message
                                                for message in toasts(app)),
                             what="the notice that the save is waiting")
            assert holder.holding, "the event loop was blocked until the holder gave up"
            assert not any(message.startswith("Saved example") for message in toasts(app))
        finally:
            holder.release()
        await wait_until(pilot, lambda: any(message.startswith("Saved example #2")
                                            for message in toasts(app)), what="the save")
        assert app.screen.query_one(StatusLine).examples == 2
    with ExampleStore(data_dir) as store:
        assert [example.response for example in store.iter_examples()] == \
            ["Imported.", "A lock is held."]


async def test_editing_and_deleting_while_another_process_writes(tmp_path):
    """The dataset screen's writes wait in workers too; the table keeps moving meanwhile."""
    data_dir = tmp_path / "data"
    with ExampleStore(data_dir) as store:
        for number in range(1, 4):
            store.add(f"Question {number}", f"Answer {number}", source="cli")
    app = DatasetHostApp(data_dir)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: showing(app, DatasetScreen)
                         and dataset_table(app).row_count == 3, what="the table")
        holder = LockHolder(data_dir)
        try:
            await pilot.press("e")
            await wait_until(pilot, lambda: showing(app, CurateModal),
                             what="the edit modal")
            await pilot.press("f7", *"Edited while locked", "ctrl+s")
            await wait_until(pilot, lambda: showing(app, DatasetScreen),
                             what="back on the table")
            await pilot.press("down", "d")
            await wait_until(pilot, lambda: showing(app, ConfirmModal),
                             what="the delete question")
            await pilot.press("y")
            await wait_until(pilot, lambda: showing(app, DatasetScreen),
                             what="back on the table")
            await pilot.press("down")
            assert dataset_table(app).cursor_row == 2
            assert holder.holding, "the event loop was blocked until the holder gave up"
            assert app.notes == []
        finally:
            holder.release()
        await wait_until(pilot, lambda: {"Saved example #1.", "Deleted example #2."}
                         <= set(app.notes), what="the edit and the delete")
    with ExampleStore(data_dir) as store:
        assert [(example.id, example.response) for example in store.iter_examples()] == \
            [(1, "Edited while locked"), (3, "Answer 3"), (4, "Imported.")]
