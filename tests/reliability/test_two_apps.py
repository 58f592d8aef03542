"""Two apps on one workspace (issue 6, item 5): what works together, and what says why not.

App A is the real `sftchat` in its own process on a pseudo-terminal; app B is the real app
under Pilot in this process. Both chat and curate into the same store and each sees the
other's examples; only one of them can train at a time, and the other is told which run holds
the workspace; when A is killed with -9 mid-training, its trainer does not linger and B can
train.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from pty_app import CTRL_T, PtyApp
from sftchat.adapters.registry import pid_alive
from sftchat.dataset.store import ExampleStore
from sftchat.training.workspace_lock import LOCK_FILE
from sftchat.tui.screens.curate import CurateModal
from sftchat.tui.widgets.status_line import StatusLine
from tui.tui_helpers import (ENDLESS_TRAINING, ask, make_workspace, notices, recording_app,
                             settings_for, toasts, showing, wait_until)

SIZE = (120, 40)


async def _ask_and_save(pilot, question: str, response: str) -> None:
    app = pilot.app
    await ask(pilot, question)
    await pilot.press("ctrl+s")
    await wait_until(pilot, lambda: showing(app, CurateModal), what="B's modal")
    await pilot.press("f7", *response, "ctrl+s")
    await wait_until(pilot, lambda: not isinstance(app.screen, CurateModal), what="B's save")


async def test_two_apps_curate_together_and_train_one_at_a_time(tmp_path):
    # Long runs (they are stopped, never finished) and short greedy answers.
    workspace = make_workspace(tmp_path / "ws", max_new_tokens=16,
                               extra=ENDLESS_TRAINING)
    app_a = PtyApp(workspace)
    app_b = recording_app(settings_for(workspace))
    try:
        async with app_b.run_test(size=SIZE) as pilot:
            status_b = app_b.screen.query_one(StatusLine)
            await asyncio.to_thread(app_a.wait_until_loaded)
            await wait_until(pilot, lambda: app_b.engine is not None, timeout=120,
                             what="B's model")

            # A curates; B's status line notices without any action in B.
            await asyncio.to_thread(app_a.ask, "Which app saved me?")
            await asyncio.to_thread(app_a.save_last_answer, "App A did.")
            await wait_until(pilot, lambda: status_b.examples == 1, timeout=10,
                             what="B's count of A's example")
            # B curates; A's status line shows both.
            await _ask_and_save(pilot, "And me?", "App B did.")
            assert status_b.examples == 2
            await asyncio.to_thread(app_a.wait_for, r"dataset: 2 examples", 10)
            assert sorted(row[0] for row in _responses(workspace)) == ["App A did.",
                                                                       "App B did."]

            # A trains; B's attempt is refused with who holds the workspace.
            mark = app_a.mark()
            app_a.send(CTRL_T)
            await asyncio.to_thread(app_a.wait_for, r"training: step \d+/", 120, mark)
            holder = json.loads((workspace / "adapters" / LOCK_FILE).read_text())
            await pilot.press("ctrl+t")
            await wait_until(pilot, lambda: any("Training did not start" in n for n in notices(app_b)),
                             timeout=120, what="B's refusal")
            refusal = next(n for n in notices(app_b) if "Training did not start" in n)
            assert "another training run is using this workspace" in refusal
            assert f"adapter {holder['name']}" in refusal and f"pid {holder['pid']}" in refusal
            await wait_until(pilot, lambda: app_b.trainer is None, timeout=120,
                             what="B's refused trainer process to exit")
            assert status_b.training == "idle"
            assert pid_alive(holder["pid"])  # A's run was not disturbed

            # A dies mid-run: its trainer stops with it (its event pipe is gone), publishes
            # nothing and releases the workspace, so B can train.
            await asyncio.to_thread(app_a.kill)
            deadline = time.monotonic() + 60
            while pid_alive(holder["pid"]):
                assert time.monotonic() < deadline, "A's trainer outlived A"
                await pilot.pause(0.1)
            await pilot.press("ctrl+t")
            await wait_until(pilot, lambda: status_b.training.startswith("step"), timeout=120,
                             what="B's training")
            await pilot.press("ctrl+b")
            await wait_until(pilot, lambda: app_b.trainer is None, timeout=60,
                             what="B's cancel")
    finally:
        app_a.close()
    published = [p for p in (workspace / "adapters").iterdir() if not p.name.startswith(".")]
    assert published == []


def _responses(workspace):
    with ExampleStore(workspace / "data") as store:
        return [(example.response,) for example in store.iter_examples()]


async def test_the_app_saves_while_the_cli_adds_examples_in_a_loop(tmp_path):
    """Issue 6, item 1: the app and the CLI adding at the same time lose nothing and never
    fail with "database is locked"."""
    workspace = make_workspace(tmp_path / "ws", max_new_tokens=8)
    stop = tmp_path / "stop"
    # Real `sftchat data add` commands, one after another until the test is done saving.
    loop = (f'i=0; while [ ! -e "{stop}" ] || [ $i -lt 5 ]; do i=$((i+1)); '
            f'"{sys.executable}" -m sftchat.cli --workspace "{workspace}" data add '
            '--instruction "cli $i" --response "réponse $i" || exit 1; done')
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.engine is not None, timeout=120, what="the model")
        writer = subprocess.Popen(["bash", "-c", loop], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            for number in range(3):
                await _ask_and_save(pilot, f"app question {number}", f"app answer {number}")
            assert writer.poll() is None, "the CLI loop stopped while the app was saving"
            stop.touch()
            await wait_until(pilot, lambda: writer.poll() is not None, timeout=120,
                             what="the CLI loop")
        finally:
            if writer.poll() is None:
                writer.kill()
        out, err = writer.communicate()
        assert writer.returncode == 0 and err == "", err
        cli_ids = [int(line) for line in out.split()]
        errors = toasts(app, severity="error")
        assert errors == []
        await wait_until(pilot, lambda: app.screen.query_one(StatusLine).examples
                         == len(cli_ids) + 3, timeout=10, what="the status line's count")
    assert len(cli_ids) >= 5
    with ExampleStore(workspace / "data") as store:
        stored = {example.id: example for example in store.iter_examples()}
    assert len(stored) == len(cli_ids) + 3
    assert all(stored[i].instruction.startswith("cli ") for i in cli_ids)
    assert sorted(e.response for e in stored.values() if e.source == "chat") == [
        f"app answer {number}" for number in range(3)]
