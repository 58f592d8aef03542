"""Chat widgets and screen details: untrusted text, deferred swaps, palette, snapshots."""

from __future__ import annotations

import shutil

from textual.app import App
from textual.widgets import Markdown

from sftchat.prompts import Turn
from sftchat.tui.app import create_app
from sftchat.tui.messages import TrainingEnded
from sftchat.tui.screens.chat_commands import Exchange
from sftchat.tui.widgets.chat_log import ChatLog
from sftchat.tui.widgets.prompt_input import PromptInput
from sftchat.tui.widgets.status_line import StatusLine
from tui_helpers import (NO_REVIEW, answers, finished_answers, make_long_answer_workspace,
                         make_workspace, settings_for, steady_cursors, showing, wait_until)

SIZE = (120, 40)
HOSTILE = "[bold]x[/bold] [link=http://e.vil]y[/link] \x1b[31mred\x1b]0;pwned\x07 done"


class LogHost(App):
    def compose(self):
        yield ChatLog()


async def test_model_text_is_never_markup_or_escape_sequences():
    app = LogHost()
    async with app.run_test(size=SIZE) as pilot:
        log = app.query_one(ChatLog)
        user = log.add_user(HOSTILE)
        answer = log.add_assistant(1)
        await pilot.pause()
        for piece in (HOSTILE[:9], HOSTILE[9:]):
            await answer.append(piece)
        await answer.finish(HOSTILE, "meta [bold]not markup[/bold]")
        await pilot.pause()
        shown_user = str(user.render())
        assert "[bold]x[/bold]" in shown_user and "\x1b" not in shown_user
        assert answer.text == "[bold]x[/bold] [link=http://e.vil]y[/link] red done"
        markdown_source = answer.query_one(Markdown).source
        assert "\x1b" not in markdown_source and "\x07" not in markdown_source
        assert "[bold]x[/bold]" in markdown_source
        # What is drawn on screen shows the brackets literally and no escape character.
        screen_text = app.export_screenshot().replace("&#160;", " ")
        assert screen_text.count("[bold]x[/bold]") == 2  # the question and the answer
        assert "\x1b" not in screen_text and "pwned" not in screen_text
        assert "[bold]not markup[/bold]" in str(answer.query_one(".answer-meta").render())


async def test_markdown_renders_code_blocks():
    app = LogHost()
    async with app.run_test(size=SIZE) as pilot:
        answer = app.query_one(ChatLog).add_assistant(1)
        await pilot.pause()
        await answer.finish("Try:\n\n```python\nprint('hi')\n```\n", "meta")
        await pilot.pause()
        from textual.widgets._markdown import MarkdownFence

        fences = list(answer.query(MarkdownFence))
        assert fences and fences[0].lexer == "python"


async def test_an_automatic_swap_waits_for_the_answer_to_finish(tmp_path, monkeypatch,
                                                             trained_workspace):
    # An answer with no end (4000 tokens): certainly still streaming when the run ends.
    workspace = make_long_answer_workspace(tmp_path / "ws", monkeypatch, top=NO_REVIEW)
    shutil.copytree(trained_workspace / "adapters", workspace / "adapters")
    app = create_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.engine is not None, what="the model")
        status = app.screen.query_one(StatusLine)
        app.screen.query_one(PromptInput).text = "Talk for a while."
        await pilot.press("enter")
        await wait_until(pilot, lambda: answers(app) and answers(app)[0].text,
                         what="the answer to start")
        # The trainer publishes while the answer streams.
        app.screen.post_message(TrainingEnded({"event": "finished", "name": "first",
                                               "final_loss": 0.01}))
        await wait_until(pilot, lambda: app.screen.pending_swap == "first",
                         what="the swap to be deferred")
        assert app.screen.generating and status.adapter is None
        await pilot.press("escape")  # the answer ends (stopped); the swap follows it
        await wait_until(pilot, lambda: finished_answers(app), what="the answer to finish")
        await wait_until(pilot, lambda: status.adapter == "first", what="the deferred swap")
        meta = answers(app)[0].query_one(".answer-meta").render().plain
        assert meta.startswith("base model") and meta.endswith("stopped")


async def test_command_palette_opens_the_dataset(tmp_path):
    app = create_app(settings_for(make_workspace(tmp_path)))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+p")
        from textual.command import CommandPalette
        from textual.widgets import OptionList

        await wait_until(pilot, lambda: showing(app, CommandPalette),
                         what="the palette")
        await pilot.press(*"Browse dataset")
        # The palette searches asynchronously: wait for its hit before choosing it.
        await wait_until(pilot, lambda: app.screen.query_one(OptionList).option_count == 1,
                         what="the palette's hit")
        await pilot.press("enter")
        from sftchat.tui.screens.dataset import DatasetScreen

        await wait_until(pilot, lambda: showing(app, DatasetScreen),
                         what="the dataset screen")


def _loaded(app):
    async def run_before(pilot):
        await wait_until(pilot, lambda: app.engine is not None, what="the model")
        steady_cursors(app)
        await pilot.pause()
    return run_before


def test_snapshot_chat_screen(tmp_path, snap_compare):
    app = create_app(settings_for(make_workspace(tmp_path)))
    assert snap_compare(app, terminal_size=(100, 30), run_before=_loaded(app))


def test_snapshot_curate_modal(tmp_path, snap_compare):
    app = create_app(settings_for(make_workspace(tmp_path)))

    async def open_modal(pilot):
        await _loaded(app)(pilot)
        app.screen.last_exchange = Exchange(Turn("What is the best editor?",
                                                 "The one you know best."))
        await pilot.press("ctrl+s")
        await pilot.pause()
        steady_cursors(app)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 30), run_before=open_modal)


def test_snapshot_help(tmp_path, snap_compare):
    app = create_app(settings_for(make_workspace(tmp_path)))
    assert snap_compare(app, press=["f1"], terminal_size=(100, 30), run_before=_loaded(app))
