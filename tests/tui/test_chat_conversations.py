"""Issue 19 in the app, under Pilot on the real built-in model and the real store: what is
saved, pinned, flagged or compared keeps the conversation it came from (the earlier turns
and the system prompt); the curate modal edits, drops and learns earlier turns; `/system`
and `/set` change the next answers; a swap keeps the context; the status line names the
model short enough for the adapter to stay in view."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

from rich.text import Text
from textual.app import App
from textual.widgets import Checkbox, TextArea

from sftchat.conversation import Turn
from sftchat.dataset.pins import Pins
from sftchat.dataset.store import ExampleStore
from sftchat.prompts import encode_prompt
from sftchat.tui.screens.compare import CompareScreen
from sftchat.tui.screens.curate import CurateModal
from sftchat.tui.widgets.status_line import StatusLine, model_label, short_model_name
from tui_helpers import (answers, ask, make_workspace, notices, recording_app, settings_for,
                         toasts, showing, wait_until)

SIZE = (120, 40)
SYSTEM = "You are terse."


async def _loaded(pilot) -> list:
    """Wait for the model; then record every `generate` call the app makes on the real
    engine: (instruction, keyword arguments, the generation)."""
    app = pilot.app
    await wait_until(pilot, lambda: app.engine is not None, what="the model")
    calls: list = []
    original = app.engine.generate

    def generate(instruction, **kwargs):
        generation = original(instruction, **kwargs)
        calls.append((instruction, kwargs, generation))
        return generation

    app.engine.generate = generate
    return calls


async def _open_curate(pilot) -> CurateModal:
    await pilot.press("ctrl+s")
    await wait_until(pilot, lambda: isinstance(pilot.app.screen, CurateModal),
                     what="the curate modal")
    return pilot.app.screen


def _editor(modal: CurateModal, widget_id: str) -> TextArea:
    return modal.query_one(f"#{widget_id}", TextArea)


async def _replace_text(pilot, editor: TextArea, text: str) -> None:
    """Type `text` over what the editor holds, as a user does (F7 selects all)."""
    editor.focus()
    await pilot.press("f7", *text)


async def _toggle(pilot, modal: CurateModal, checkbox_id: str) -> None:
    modal.query_one(f"#{checkbox_id}", Checkbox).focus()
    await pilot.press("space")


def _examples(workspace) -> list:
    with ExampleStore(workspace / "data") as store:
        return list(store.iter_examples())


async def test_ctrl_s_on_a_follow_up_saves_the_conversation_up_to_it(tmp_path):
    workspace = make_workspace(tmp_path, top=f'system = "{SYSTEM}"\n')
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        calls = await _loaded(pilot)
        status = app.screen.query_one(StatusLine)
        assert status.system and status.sampling == "T0 p0.9 48tok"
        await ask(pilot, "What is the capital of France?")
        await ask(pilot, "What is its population?")
        first, second = app.screen.turns
        # Each answer was asked under the system prompt, the second after the first turn.
        assert [(kwargs["system"], kwargs["history"]) for _, kwargs, _ in calls] == [
            (SYSTEM, []), (SYSTEM, [first])]
        modal = await _open_curate(pilot)
        # The modal shows the system prompt and the earlier turn; focus in the last answer.
        assert _editor(modal, "curate-system").text == SYSTEM
        assert _editor(modal, "curate-user-0").text == first.instruction
        # (An editor joins lines with "\n" whatever broke them: the model's answer may hold
        # any line break; left alone, it is saved as the model gave it.)
        assert _editor(modal, "curate-answer-0").text == "\n".join(first.response.splitlines())
        assert not modal.query_one("#curate-learn-0", Checkbox).value
        response = _editor(modal, "curate-response")
        assert response.has_focus and response.cursor_location == response.document.end
        assert _editor(modal, "curate-instruction").text == "What is its population?"
        await pilot.press("f7", *"About 2.1 million.", "ctrl+s")
        await wait_until(pilot, lambda: app.store.count() == 1, what="the save")
    (example,) = _examples(workspace)
    assert (example.instruction, example.response) == ("What is its population?",
                                                       "About 2.1 million.")
    assert example.original_response == second.response
    assert example.system == SYSTEM
    assert example.context == (Turn(first.instruction, first.response),)


async def test_the_curate_modal_edits_drops_and_learns_earlier_turns(tmp_path):
    workspace = make_workspace(tmp_path)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        calls = await _loaded(pilot)
        for question in ("Name a river.", "Name a mountain.", "Which is longer?"):
            await ask(pilot, question)
        first, second, third = app.screen.turns
        modal = await _open_curate(pilot)
        # No system prompt in this conversation: its editor is there, empty.
        assert _editor(modal, "curate-system").text == ""
        await _replace_text(pilot, _editor(modal, "curate-answer-0"), "The Nile.")
        await _toggle(pilot, modal, "curate-learn-0")
        await _toggle(pilot, modal, "curate-keep-1")
        # A dropped turn is greyed out: its editors and its learn box are disabled.
        assert modal.query_one("#curate-turn-1").has_class("dropped")
        assert _editor(modal, "curate-answer-1").disabled
        assert modal.query_one("#curate-learn-1", Checkbox).disabled
        # An earlier turn left without a message is refused, saying which one.
        editor = _editor(modal, "curate-user-0")
        editor.focus()
        await pilot.press("f7", "space")
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, CurateModal)
        assert any("Turn 1 needs a message and an answer" in t for t in toasts(app, "error"))
        await _replace_text(pilot, _editor(modal, "curate-user-0"), "Name a long river.")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.store.count() == 1, what="the save")
        # The chat's own context follows the corrected turn (the dropped one stays in it).
        await wait_until(pilot, lambda: app.screen.turns[0].response == "The Nile.",
                         what="the correction in the chat's context")
        assert app.screen.turns[1:] == [second, third]
        await ask(pilot, "And the shortest?")
        assert calls[-1][1]["history"][0] == Turn("Name a long river.", "The Nile.")
    (example,) = _examples(workspace)
    assert example.instruction == "Which is longer?" and example.response == third.response
    assert example.context == (Turn("Name a long river.", "The Nile.", learn=True),)
    assert first.response != "The Nile."


async def test_slash_system_sets_shows_clears_and_is_saved(tmp_path):
    workspace = make_workspace(tmp_path)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        calls = await _loaded(pilot)
        status = app.screen.query_one(StatusLine)
        await ask(pilot, "Hello?")
        assert calls[-1][1]["system"] == "" and not status.system
        plain_tokens = calls[-1][2].prompt_tokens
        await pilot.press(*"/system", "enter")
        await wait_until(pilot, lambda: any("No system prompt" in t for t in toasts(app)),
                         what="/system showing there is none")
        await pilot.press(*f"/system {SYSTEM}", "enter")
        await wait_until(pilot, lambda: status.system, what="the status line's mark")
        assert any(SYSTEM in notice for notice in notices(app))
        await pilot.press("ctrl+n")  # a new conversation keeps the system prompt
        await ask(pilot, "Hello?")
        assert calls[-1][1]["system"] == SYSTEM
        # The prompt the model answered is the one the template renders with the system
        # prompt (Alpaca's header gives way to it).
        with_system = encode_prompt(app.engine.tokenizer, app.engine.template, "Hello?",
                                    system=SYSTEM)
        assert calls[-1][2].prompt_tokens == len(with_system.ids) != plain_tokens
        await pilot.press(*"/system", "enter")
        await wait_until(pilot, lambda: any(t == f"System prompt: {SYSTEM}"
                                            for t in toasts(app)), what="/system showing it")
        # Changing it applies from the next answer on: the answer already given keeps the
        # one it was answered under, and is saved with it.
        await pilot.press(*"/system none", "enter")
        await wait_until(pilot, lambda: not status.system, what="the system prompt cleared")
        modal = await _open_curate(pilot)
        assert _editor(modal, "curate-system").text == SYSTEM
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.store.count() == 1, what="the save")
        await ask(pilot, "Hello again?")
        assert calls[-1][1]["system"] == ""
    (example,) = _examples(workspace)
    assert (example.instruction, example.system, example.context) == ("Hello?", SYSTEM, ())


async def test_slash_set_changes_sampling_and_refuses_bad_values(tmp_path):
    app = recording_app(settings_for(make_workspace(tmp_path, temperature=1.0)))
    async with app.run_test(size=SIZE) as pilot:
        calls = await _loaded(pilot)
        status = app.screen.query_one(StatusLine)
        assert status.sampling == "T1 p0.9 48tok"
        for typed, fragment in (("/set temperature hot", "temperature: must be a number"),
                                ("/set top_p 0", "top_p must be in (0, 1]"),
                                ("/set temperature -1", "temperature must be 0"),
                                ("/set max_new_tokens 2.5", "must be a whole number"),
                                ("/set temperature nan", "must be a finite number"),
                                ("/set colour blue", "unknown setting 'colour'")):
            errors_before = len(toasts(app, "error"))
            await pilot.press(*typed, "enter")
            await wait_until(pilot, lambda n=errors_before: len(toasts(app, "error")) > n,
                             what=f"the refusal of {typed}")
            errors = toasts(app, "error")
            assert len(errors) == errors_before + 1 and fragment in errors[-1], errors[-1]
        assert status.sampling == "T1 p0.9 48tok"  # nothing changed
        await pilot.press(*"/set temperature 0", "enter")
        await pilot.press(*"/set top_p=0.95", "enter")
        await pilot.press(*"/set max_new_tokens 6", "enter")
        await wait_until(pilot, lambda: status.sampling == "T0 p0.95 6tok",
                         what="the new sampling in the status line")
        await pilot.press(*"/set", "enter")
        await wait_until(pilot, lambda: any(
            "temperature 0, top_p 0.95, max_new_tokens 6" in t for t in toasts(app)),
            what="/set showing the values")
        await ask(pilot, "Count to a hundred.")
        settings = calls[-1][1]["settings"]
        assert (settings.temperature, settings.top_p, settings.max_new_tokens) == (0, 0.95, 6)
        assert calls[-1][2].new_tokens <= 6
        # Greedy now: the same question gets the same answer.
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(answers(app)) == 2
                         and answers(app)[-1].has_class("done"), what="the regeneration")
        assert answers(app)[0].text == answers(app)[1].text


async def test_a_swap_keeps_the_conversation_and_pins_bad_answers_and_compare_keep_it(
        tmp_path, trained_workspace):
    workspace = make_workspace(tmp_path / "ws", max_new_tokens=12, top=f'system = "{SYSTEM}"\n')
    shutil.copytree(trained_workspace / "adapters", workspace / "adapters")
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        calls = await _loaded(pilot)
        status = app.screen.query_one(StatusLine)
        await ask(pilot, "Tell me about rivers.")
        await pilot.press(*"/adapter first", "enter")
        await wait_until(pilot, lambda: status.adapter == "first", what="the swap")
        assert len(app.screen.turns) == 1
        assert any("now answering: adapter first · same conversation" in n
                   for n in notices(app))
        await ask(pilot, "And about lakes?")
        first, second = app.screen.turns
        assert calls[-1][1]["history"] == [first] and calls[-1][2].adapter == "first"

        # ctrl+k pins the last turn with the one before it; /pin 1 the first turn alone.
        await pilot.press("ctrl+k")
        await wait_until(pilot, lambda: any(t.startswith("Pinned as pin #1")
                                            for t in toasts(app)), what="the pin")
        await pilot.press(*"/pin 1", "enter")
        await wait_until(pilot, lambda: any(t.startswith("Pinned as pin #2")
                                            for t in toasts(app)), what="the pin of turn 1")
        assert not any("replayed alone" in t for t in toasts(app))
        await pilot.press("ctrl+x")
        await wait_until(pilot, lambda: any(t.startswith("Kept as a bad answer")
                                            for t in toasts(app)), what="the bad answer")

        # Compare answers the same turn after the same context, under the same system.
        await pilot.press("ctrl+y")
        await wait_until(pilot, lambda: showing(app, CompareScreen),
                         what="the compare screen")
        await wait_until(pilot, lambda: all(app.screen.done), timeout=120,
                         what="every compared answer")
        compared = calls[-2:]
        assert [kwargs["history"] for _, kwargs, _ in compared] == [[first], [first]]
        assert {kwargs["system"] for _, kwargs, _ in compared} == {SYSTEM}
        await pilot.press("1")
        await wait_until(pilot, lambda: app.store.count() == 1, what="the compared save")

    with ExampleStore(workspace / "data") as store:
        pins = Pins(store).all()
        (rejected,) = [r for r in store.iter_rejected() if r.source == "bad"]
        (example,) = store.iter_examples()
    assert [(p.instruction, p.system, p.context, p.adapter) for p in pins] == [
        ("And about lakes?", SYSTEM, (first,), "first"),
        ("Tell me about rivers.", SYSTEM, (), "first")]
    assert (rejected.instruction, rejected.system, rejected.context) == (
        "And about lakes?", SYSTEM, (first,))
    assert (example.instruction, example.system, example.context) == (
        "And about lakes?", SYSTEM, (first,))
    assert second.response  # the adapter answered the follow-up


def test_short_model_names():
    assert short_model_name("builtin") == "builtin"
    assert short_model_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "SmolLM2-135M-Instruct"
    assert short_model_name("/home/me/models/qwen2.5-0.5b/") == "qwen2.5-0.5b"
    assert short_model_name("/a/b/SmolLM2-135M-Instruct.Q4_1.gguf") == \
        "SmolLM2-135M-Instruct.Q4_1"
    # A folder holding one GGUF file: the file it was converted from names it.
    assert short_model_name("/models/smol", "/models/smol/SmolLM2.Q8_0.gguf") == "SmolLM2.Q8_0"


class StatusHost(App):
    def compose(self):
        yield StatusLine()


LONG_GGUF = ("/home/someone/.cache/sftchat/some/deeply/nested/folder/of/models/"
             "SmolLM2-135M-Instruct.Q4_1.gguf")


def _status_text(app: App) -> str:
    line = app.query_one(StatusLine)
    rendered = line.render()
    return rendered.plain if isinstance(rendered, Text) else str(rendered)


async def test_the_status_line_keeps_the_adapter_in_view_at_80_columns():
    loaded = SimpleNamespace(spec=LONG_GGUF, identity={"gguf": {"path": LONG_GGUF}},
                             quantized=True, compute_dtype="bfloat16", device="cuda")
    app = StatusHost()
    async with app.run_test(size=(80, 24)) as pilot:
        status = app.query_one(StatusLine)
        status.model = model_label(loaded)
        status.adapter = "sft-20261129-122726"
        status.examples, status.sampling, status.system = 12, "T0.2 p0.95 512tok", True
        status.gpu_memory = "GPU 1.2/139.8 GiB"
        await pilot.pause()
        assert status.model == "SmolLM2-135M-Instruct.Q4_1 (4-bit NF4, cuda)"
        assert status.size.width == 80  # the line is drawn for the terminal's width
        text = _status_text(app)
        assert len(text) <= 80
        assert "SmolLM2-135M-Instruct.Q4_1 (4-bit NF4, cuda)  adapter: sft-20261129-122726" \
            in text, text
        # A longer adapter name still shows whole: the model's name gives way.
        status.adapter = "conversations-with-context-v2-final"
        await pilot.pause()
        text = _status_text(app)
        assert len(text) <= 80 and text.rstrip().endswith(
            "(4-bit NF4, cuda)  adapter: conversations-with-context-v2-final"), text
        assert text.startswith(" ● SmolLM2-135M… (4-bit NF4, cuda)"), text
        # Wide enough, everything shows with its label.
        await pilot.resize_terminal(200, 24)
        await pilot.pause()
        text = _status_text(app)
        for part in ("dataset: 12 examples", "training: idle", "T0.2 p0.95 512tok",
                     "system: on", "GPU 1.2/139.8 GiB"):
            assert part in text, text


async def test_the_palette_offers_the_system_prompt_and_sampling(tmp_path):
    from textual.command import CommandPalette
    from textual.widgets import OptionList

    from sftchat.tui.widgets.prompt_input import PromptInput

    app = recording_app(settings_for(make_workspace(tmp_path, top=f'system = "{SYSTEM}"\n')))
    async with app.run_test(size=SIZE) as pilot:
        prompt = app.screen.query_one(PromptInput)
        for title, filled in (("Set the system prompt", f"/system {SYSTEM}"),
                              ("Sampling: temperature", "/set ")):
            await pilot.press("ctrl+p")
            await wait_until(pilot, lambda: showing(app, CommandPalette),
                             what="the palette")
            await pilot.press(*title)
            await wait_until(pilot, lambda: app.screen.query_one(OptionList).option_count,
                             what="the palette's hit")
            await pilot.press("enter")
            await wait_until(pilot, lambda f=filled: prompt.text == f,
                             what=f"the prompt to hold {filled!r}")
        assert any(t.startswith("Sampling: temperature 0, top_p 0.9, max_new_tokens 48")
                   for t in toasts(app))
