"""Export from the adapters screen, under Pilot: the real app, the real `sftchat export --json`
subprocess on the built-in model (adapter `first` of the shared trained workspace, copied).

A GGUF export runs to the end (the file, the notification, the copied command); a folder in
use is replaced only after a yes; a damaged adapter fails in one notification and leaves no
staging folder; Escape mid-export kills the exporter and publishes nothing. Each test waits
for the chat's model before exporting, so the app and the exporter never compute at once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from textual.widgets import Input, Label

from sftchat.export import FORMATS
from sftchat.tui.screens.adapters import AdaptersScreen
from sftchat.tui.screens.confirm import ConfirmModal
from sftchat.tui.screens.export import DONE, FORM, RUNNING, ExportScreen
from sftchat.tui.widgets.prompt_input import PromptInput
from sftchat.tui.widgets.status_line import StatusLine
from tui_helpers import recording_app, settings_for, toasts, showing, wait_until

SIZE = (120, 40)
EXPORT_S = 300.0   # the longest an export may take here (about 7 s on an idle machine)


@pytest.fixture
def workspace(tmp_path, trained_workspace) -> Path:
    """A copy of the trained workspace (exports write into it)."""
    return Path(shutil.copytree(trained_workspace, tmp_path / "ws"))


def staging_left(folder: Path) -> list[Path]:
    return sorted(folder.parent.glob(f".{folder.name}.partial-*")) if folder.parent.exists() \
        else []


def dialog(app) -> ExportScreen:
    assert isinstance(app.screen, ExportScreen)
    return app.screen


def dialog_status(app) -> str:
    return str(dialog(app).query_one("#export-status", Label).content)


def status_line(app) -> StatusLine:
    return app.get_screen("chat").query_one(StatusLine)


async def open_export_dialog(pilot) -> ExportScreen:
    """Wait for the chat's model, open the adapters screen, press `e` on `first`."""
    app = pilot.app
    await wait_until(pilot, lambda: app.engine is not None, timeout=120, what="the model")
    await pilot.press("f3")
    await wait_until(pilot, lambda: showing(app, AdaptersScreen)
                     and not app.screen.loading, what="the adapters listed")
    await pilot.press("e")
    await wait_until(pilot, lambda: showing(app, ExportScreen),
                     what="the export dialog")
    await pilot.pause()
    assert app.screen.adapter == "first"
    return app.screen


async def start(pilot, folder: Path | None = None, fmt: str = "gguf") -> None:
    """Pick `fmt` (and type `folder`), press Export."""
    await pilot.click(f"#format-{fmt}")
    if folder is not None:
        dialog(pilot.app).query_one("#export-folder", Input).value = str(folder)
    await pilot.click("#export-run")


async def test_a_gguf_export_runs_in_the_background_and_says_where_it_went(workspace):
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_export_dialog(pilot)
        folder_input = screen.query_one("#export-folder", Input)
        exports = workspace.absolute() / "exports"
        # The folder follows the format until it is edited; the GGUF type is for gguf only.
        await pilot.click("#format-ollama")
        assert folder_input.value == str(exports / "first-ollama")
        assert screen.query_one("#export-outtype").disabled
        await pilot.click("#format-gguf")
        target = exports / "first-gguf"
        assert folder_input.value == str(target)
        assert not screen.query_one("#export-outtype").disabled

        await start(pilot)
        assert screen.state == RUNNING and app.exporting
        assert status_line(app).export   # "starting…", then the exporter's progress
        await wait_until(pilot, lambda: screen.state != RUNNING, timeout=EXPORT_S,
                         what="the export to end")

        assert screen.state == DONE, dialog_status(app)
        assert (target / "first-f16.gguf").is_file()
        assert staging_left(target) == []
        assert screen.progress, "the exporter's progress was shown while it ran"
        assert status_line(app).export == ""
        await wait_until(pilot, lambda: any(str(target) in note for note in toasts(app)),
                         what="the notification")
        (note,) = [note for note in toasts(app) if str(target) in note]
        next_step = screen.result["next_step"]
        assert next_step.startswith("llama-cli -m ") and next_step in note
        assert toasts(app, "error") == []
        # `c` copies the command that runs the export.
        await pilot.press("c")
        assert app.clipboard == next_step
        await pilot.press("escape")
        assert isinstance(app.screen, AdaptersScreen)


async def test_a_folder_in_use_is_replaced_only_after_a_yes(workspace):
    target = workspace.absolute() / "mine"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await open_export_dialog(pilot)
        await start(pilot, target)
        await wait_until(pilot, lambda: showing(app, ConfirmModal),
                         what="the question")
        assert str(target) in str(app.screen.query_one("#confirm-question", Label).content)
        await pilot.press("n")
        await wait_until(pilot, lambda: showing(app, ExportScreen), what="the form")
        assert dialog(app).state == FORM and app.exporter is None
        assert dialog_status(app).startswith(f"Nothing was written: {target} is kept")

        # `/export` asks the same question.
        await pilot.press("escape", "escape")
        await wait_until(pilot, lambda: app.screen is app.get_screen("chat"), what="the chat")
        app.screen.query_one(PromptInput).text = f"/export first gguf {target}"
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, ConfirmModal),
                         what="the question")
        await pilot.press("n")
        await pilot.pause()
        assert app.exporter is None
    assert [path.name for path in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "precious"


async def test_the_export_slash_command_runs_copies_and_explains_itself(workspace):
    """`/export NAME FORMAT DIR` to the end from the chat, `/export copy`, and what
    `/export cancel` and a wrong `/export` say."""
    target = workspace.absolute() / "lora"
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.engine is not None, timeout=120, what="the model")
        prompt = app.screen.query_one(PromptInput)

        async def say(text: str) -> None:
            prompt.text = text
            await pilot.press("enter")
            await pilot.pause()

        await say("/export cancel")
        assert "No export is running." in toasts(app)
        await say("/export copy")
        assert "No export has finished yet." in toasts(app)
        await say("/export first tarball")
        assert any(note.startswith("Usage: /export NAME") for note in toasts(app))
        await say(f"/export first gguf-lora {target}")
        await wait_until(pilot, lambda: app.last_export is not None, timeout=EXPORT_S,
                         what="the export to finish")
        assert (target / "first-lora.gguf").is_file()
        assert (target / "base-as-trained-f16.gguf").is_file()
        await say("/export copy")
        assert app.clipboard == app.last_export["next_step"]
        assert app.clipboard.startswith("llama-cli -m ") and "--lora" in app.clipboard
        assert toasts(app, "error") == []


async def test_a_damaged_adapter_fails_in_one_notification_and_leaves_nothing(workspace):
    weights = workspace / "adapters" / "first" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    target = workspace.absolute() / "exports" / "first-gguf"
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_export_dialog(pilot)
        await start(pilot)
        await wait_until(pilot, lambda: screen.state != RUNNING, timeout=EXPORT_S,
                         what="the export to end")
        await wait_until(pilot, lambda: toasts(app, "error"), what="the error")
        await pilot.pause(0.2)
        (error,) = toasts(app, "error")
        assert "adapter 'first' cannot be read" in error
        assert screen.state == FORM   # back to the form, to try again
        assert dialog_status(app).startswith("Export failed: adapter 'first' cannot be read")
        assert status_line(app).export == ""
    assert not target.exists()
    assert staging_left(target) == []


async def test_escape_mid_export_kills_the_exporter_and_publishes_nothing(workspace):
    target = workspace.absolute() / "exports" / "first-gguf"
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_export_dialog(pilot)
        await start(pilot)
        exporter = app.exporter
        # Mid-export: the exporter is writing into its staging folder.
        await wait_until(pilot, lambda: staging_left(target) or not exporter.running,
                         timeout=EXPORT_S, what="the export to start writing")
        assert exporter.running, "the export ended before it could be stopped"
        pid = exporter.process.pid
        await pilot.press("escape")
        await wait_until(pilot, lambda: screen.state != RUNNING, timeout=60,
                         what="the export to stop")
        assert screen.state == FORM
        assert exporter.process.returncode is not None and exporter.finished is None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)   # gone, and reaped
        assert not app.exporting
        assert dialog_status(app).startswith("export stopped; nothing was written")
        assert toasts(app, "error") == []
        assert not target.exists()
        assert staging_left(target) == []
        await pilot.press("escape")   # the dialog, idle again, closes
        assert isinstance(app.screen, AdaptersScreen)


async def test_quitting_mid_export_asks_then_stops_it_and_leaves_nothing(workspace):
    target = workspace.absolute() / "exports" / "first-gguf"
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await open_export_dialog(pilot)
        await start(pilot)
        await pilot.press("h")   # hidden: the export goes on, its progress in the status line
        await wait_until(pilot, lambda: showing(app, AdaptersScreen),
                         what="the dialog hidden")
        exporter = app.exporter
        await wait_until(pilot, lambda: staging_left(target) or not exporter.running,
                         timeout=EXPORT_S, what="the export to start writing")
        assert exporter.running, "the export ended before it could be stopped"
        assert status_line(app).export
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: showing(app, ConfirmModal),
                         what="the question")
        question = str(app.screen.query_one("#confirm-question", Label).content)
        assert question == "An export is running. Stop it and quit?"
        await pilot.press("y")
    assert exporter.process.returncode is not None
    assert not target.exists()
    assert staging_left(target) == []


def test_the_dialog_offers_exactly_the_exporters_formats():
    from sftchat.export.exporter import FORMATS as EXPORTER_FORMATS

    assert sorted(FORMATS) == sorted(EXPORTER_FORMATS)
