"""Issue 6's mistakes and faults as the app shows them: one clear message, nothing lost.

The CLI side of each is in `test_bad_input.py`; here the same causes reach the real app under
Pilot, on the built-in model: a model that cannot load, adapters that are unknown, damaged
or made for another base, a curated example left empty, a pasted prompt of hundreds of
kilobytes, and invalid settings (which stop `sftchat` before the interface starts).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from cli_helpers import cli_command

from sftchat.config import load_settings
from sftchat.tui.screens.curate import CurateModal
from sftchat.tui.screens.dataset import DatasetScreen
from sftchat.tui.widgets.prompt_input import PromptInput
from sftchat.tui.widgets.status_line import StatusLine
from tui.tui_helpers import (ask, finished_answers, make_workspace, notices, recording_app,
                             settings_for, toasts, showing, wait_until)

SIZE = (120, 40)


async def _wait_for_toast(pilot, *fragments: str, what: str) -> str:
    def found():
        return next((text for text in toasts(pilot.app)
                     if all(fragment in text for fragment in fragments)), None)

    await wait_until(pilot, lambda: found() is not None, what=what)
    return found()


async def test_a_model_that_cannot_load_is_one_message_and_the_rest_still_works(tmp_path):
    workspace = make_workspace(tmp_path / "ws")
    app = recording_app(load_settings(workspace=str(workspace), model=str(tmp_path / "nope")))
    async with app.run_test(size=SIZE) as pilot:
        status = app.screen.query_one(StatusLine)
        await wait_until(pilot, lambda: status.model == "model failed to load",
                         what="the load failure")
        assert [n for n in notices(app) if "Could not load the model" in n] == [
            f"Could not load the model: {app.screen.model_error}"]
        assert "nope" in app.screen.model_error and "does not exist" in app.screen.model_error
        # Asking anyway: told why, and the question stays in the input, not queued forever.
        app.screen.query_one(PromptInput).text = "Hello?"
        await pilot.press("enter")
        await _wait_for_toast(pilot, "No model to answer", "does not exist",
                              what="the no-model message")
        assert app.screen.query_one(PromptInput).text == "Hello?"
        assert app.screen.pending == []
        await pilot.press(*"/adapter latest", "enter")
        await _wait_for_toast(pilot, "no model is loaded", what="the adapter refusal")
        # The dataset is still there to curate.
        await pilot.press("f2")
        await wait_until(pilot, lambda: showing(app, DatasetScreen),
                         what="the dataset screen")


@pytest.fixture
def adapters_workspace(tmp_path, trained_workspace):
    """The trained adapter `first`, a truncated copy `broken` and a copy `foreign` whose
    metadata names another base model."""
    workspace = make_workspace(tmp_path / "ws", max_new_tokens=16)
    adapters = workspace / "adapters"
    for name in ("first", "broken", "foreign"):
        shutil.copytree(trained_workspace / "adapters" / "first", adapters / name)
    weights = adapters / "broken" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    meta_path = adapters / "foreign" / "sftchat.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["base_model"] = {"model": "Qwen/Qwen2.5-0.5B", "revision": "0" * 40,
                          "fingerprint": "f" * 64}
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    return workspace


@pytest.mark.parametrize("name, fragments", [
    ("nope", ["'nope'", "first"]),                      # the fix: the names that exist
    ("broken", ["'broken'", "corrupted", "sftchat adapters rm broken"]),
    ("foreign", ["'foreign'", "Qwen/Qwen2.5-0.5B"]),
    ("../first", ["'../first'"]),
], ids=["unknown", "corrupted", "another-base", "path-escape"])
async def test_an_adapter_that_cannot_be_used_is_refused_and_the_chat_goes_on(
        adapters_workspace, name, fragments):
    app = recording_app(settings_for(adapters_workspace))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.engine is not None, what="the model")
        status = app.screen.query_one(StatusLine)
        await ask(pilot, "Before the switch?")
        base_answer = finished_answers(app)[-1].text
        await pilot.press(*f"/adapter {name}", "enter")
        await _wait_for_toast(pilot, *fragments, what=f"the refusal of {name}")
        # Nothing changed: still the base model, with the same answer to the same question.
        assert status.adapter is None and app.engine.active_adapter is None
        await pilot.press("ctrl+n")
        await ask(pilot, "Before the switch?")
        assert finished_answers(app)[-1].text == base_answer
        # And a good adapter still loads after the failure.
        await pilot.press(*"/adapter first", "enter")
        await wait_until(pilot, lambda: status.adapter == "first", what="the good adapter")


async def test_an_empty_curated_field_is_refused_in_the_modal_and_nothing_is_saved(tmp_path):
    app = recording_app(settings_for(make_workspace(tmp_path / "ws", max_new_tokens=8)))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.engine is not None, what="the model")
        await ask(pilot, "Anything?")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: showing(app, CurateModal), what="the modal")
        await pilot.press("f7", "backspace", " ", "ctrl+s")  # a response of only a space
        await _wait_for_toast(pilot, "need some text", what="the refusal")
        assert isinstance(app.screen, CurateModal)  # still open, the instruction kept
        assert app.store.count() == 0
        await pilot.press("escape")
        assert app.store.count() == 0


async def test_a_pasted_prompt_of_hundreds_of_kilobytes_is_cut_with_a_notice(tmp_path):
    app = recording_app(settings_for(make_workspace(tmp_path / "ws", max_new_tokens=8)))
    prompt = "Summarise this: " + "lorem ipsum dolor " * 20_000
    assert len(prompt.encode()) > 300_000
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.engine is not None, what="the model")
        await ask(pilot, prompt)
        cut = [n for n in notices(app) if "too long" in n.lower()]
        assert len(cut) == 1 and "cut" in cut[0], notices(app)
        assert app.screen.turns[-1].instruction == prompt.strip()  # kept whole in context


def test_invalid_settings_stop_the_app_before_it_starts_with_one_line(tmp_path):
    workspace = make_workspace(tmp_path / "ws", extra="[training]\nlr = -1\n")
    result = subprocess.run(cli_command(workspace), capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sftchat: error:"), result.stderr
    assert "lr" in lines[0] and "sftchat.toml" in lines[0]
    assert result.stdout == ""
