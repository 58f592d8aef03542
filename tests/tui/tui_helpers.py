"""Helpers for driving the real app under Pilot: waiting on conditions instead of sleeping."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from textual.app import App
from textual.widgets import DataTable

from sftchat.config import load_settings
from sftchat.tui.screens.dataset import DatasetScreen


async def wait_until(pilot, predicate: Callable[[], bool], timeout: float = 60.0,
                     what: str = "condition") -> None:
    """Let the app run until `predicate()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await pilot.pause(0.05)


def showing(app, screen_type) -> bool:
    """Whether the app shows a `screen_type` screen that has mounted: `push_screen` makes it
    `app.screen` at once, before its widgets exist, so a query straight after would miss."""
    return isinstance(app.screen, screen_type) and app.screen.is_mounted


# A training run that goes on until it is cancelled (no early stop once the answers are learned).
ENDLESS_TRAINING = "[training]\nepochs = 100000\nearly_stop = false\n"

def make_workspace(path: Path, max_new_tokens: int = 48, temperature: float = 0.0,
                   extra: str = "", seed: int | None = None, top: str = "") -> Path:
    """A workspace whose answers are short and greedy (deterministic) unless told otherwise;
    `top` holds top-level settings, `extra` sections after [generation]."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "sftchat.toml").write_text(
        top + f"[generation]\nmax_new_tokens = {max_new_tokens}\ntemperature = {temperature}\n"
        + (f"seed = {seed}\n" if seed is not None else "") + extra)
    return path


# The app swaps a finished run's adapter in at once, as before reviews existed.
NO_REVIEW = "review = false\n"


def make_long_answer_workspace(path: Path, monkeypatch, top: str = "") -> Path:
    """A workspace whose answers run for thousands of tokens on every CPU, by construction:
    the engine (the real one) is left no stop token or stop string, so an answer ends only
    at `max_new_tokens` (4000) or when stopped. (A seeded sample's length depended on the
    CPU's arithmetic: one CPU sampled an end token early — issue 18.)"""
    import sftchat.engine

    monkeypatch.setattr(sftchat.engine, "stop_token_ids", lambda template, tokenizer: [])
    monkeypatch.setattr(sftchat.engine, "stop_strings", lambda template: [])
    return make_workspace(path, max_new_tokens=4000, temperature=0.0, top=top)


def settings_for(path: Path):
    return load_settings(workspace=str(path))


def answers(app) -> list:
    from sftchat.tui.widgets.chat_log import AssistantMessage

    return list(app.screen.query(AssistantMessage))


def finished_answers(app) -> list:
    return [answer for answer in answers(app) if answer.has_class("done")]


def notices(app) -> list[str]:
    """The chat log's notice lines (errors and events shown in the conversation)."""
    return [str(notice.render()) for notice in app.screen.query(".notice")]


def recording_app(settings, engine_factory=None):
    """The real app, built as `create_app` builds it, that also records every notification
    it shows (through Textual's public `notify`), for `toasts`."""
    from sftchat.tui.app import SftchatApp

    import sftchat.tui.app

    class RecordingApp(SftchatApp):
        # Textual reads CSS_PATH relative to the module that defines the class: this one.
        CSS_PATH = Path(sftchat.tui.app.__file__).parent / SftchatApp.CSS_PATH

        def __init__(self, *args) -> None:
            super().__init__(*args)
            self.shown: list[tuple[str, str]] = []   # (message, severity)

        def notify(self, message, *, severity="information", **kwargs) -> None:
            self.shown.append((str(message), severity))
            super().notify(message, severity=severity, **kwargs)

    return RecordingApp(settings, engine_factory)


def steady_cursors(app) -> None:
    """Stop every text cursor blinking, so a snapshot does not depend on which half of the
    blink it was taken in (under load the wait before it can outlast a blink)."""
    for widget in app.screen.query("*"):
        if hasattr(widget, "cursor_blink"):
            widget.cursor_blink = False


def toasts(app, severity: str | None = None) -> list[str]:
    """The messages of every notification shown so far (of one severity if given)."""
    return [message for message, level in app.shown if severity in (None, level)]


async def ask(pilot, text: str, timeout: float = 120.0) -> None:
    """Type `text` in the prompt, send it, and wait for its answer to finish."""
    from sftchat.tui.widgets.prompt_input import PromptInput

    before = len(finished_answers(pilot.app))
    pilot.app.screen.query_one(PromptInput).text = text
    await pilot.press("enter")
    await wait_until(pilot, lambda: len(finished_answers(pilot.app)) > before, timeout=timeout,
                     what="the answer to finish")


class DatasetHostApp(App[None]):
    """Pushes the dataset screen at start; records its dismissal and every notification."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.closed = False
        self.notes: list[str] = []
        self.errors: list[str] = []   # the notes shown with severity="error"

    def on_mount(self) -> None:
        self.push_screen(DatasetScreen(self.data_dir), self._on_closed)

    def _on_closed(self, result: None) -> None:
        self.closed = True

    def notify(self, message: str, **kwargs) -> None:
        self.notes.append(message)
        if kwargs.get("severity") == "error":
            self.errors.append(message)
        super().notify(message, **kwargs)


def dataset_table(app: App) -> DataTable:
    return app.screen.query_one("#dataset-table", DataTable)


class Gate:
    """Holds calls to a function until `release` is set, to check that the app stays
    responsive while that work waits (issue 20: nothing blocks the event loop).

    A held call gives up after `timeout` seconds and records it in `timed_out`: code that
    makes the call on the event loop then freezes the app for that long, not forever, so the
    test fails instead of hanging. `entered` is set when a call is held, `returned` when a
    held call has returned.
    """

    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()
        self.timed_out = False
        self.held_on_event_loop = False

    def wrap(self, function: Callable[..., Any],
             when: Callable[..., bool] = lambda *args, **kwargs: True) -> Callable[..., Any]:
        """`function`, with the calls for which `when(*args, **kwargs)` holds held."""
        def held(*args, **kwargs):
            if not when(*args, **kwargs):
                return function(*args, **kwargs)
            # The tests' event loop (and so the app's) runs in the main thread.
            self.held_on_event_loop |= threading.current_thread() is threading.main_thread()
            self.entered.set()
            if not self.release.wait(self.timeout):
                self.timed_out = True
            try:
                return function(*args, **kwargs)
            finally:
                self.returned.set()
        return held


async def decide_review(pilot, key: str) -> None:
    """Press `key` ("a", "r") on the review as a user does: after a pause (a key typed
    straight after it opens is taken for typing and refused)."""
    import asyncio

    from sftchat.tui.screens import review

    await asyncio.sleep(review.DECISION_PAUSE_S + 0.1)
    await pilot.press(key)


async def repaint(pilot) -> None:
    """Lay out and paint the whole screen before a snapshot. Textual 8.2.8 can leave widgets
    changed by a worker's callback or a footer recomposed on focus unpainted until the next
    layout (seen on a quiet machine: the picture showed "Loading…" after the rows were in,
    and footer keys of width 0); a resize forces one."""
    width, height = pilot.app.size
    await pilot.resize_terminal(width + 1, height)
    await pilot.resize_terminal(width, height)
    await pilot.pause()
