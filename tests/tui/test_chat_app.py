"""The chat app under Pilot, on the real built-in model and the real trainer subprocess."""

from __future__ import annotations

import json
import os
import signal
import threading

from sftchat.dataset.store import ExampleStore
from sftchat.engine import ChatEngine
from sftchat.text import strip_control
from sftchat.tui.screens.curate import CurateModal
from sftchat.tui.widgets.chat_log import UserMessage
from sftchat.tui.widgets.prompt_input import PromptInput
from sftchat.tui.widgets.status_line import StatusLine
from tui_helpers import (ENDLESS_TRAINING, NO_REVIEW, answers, ask, decide_review,
                         finished_answers, make_long_answer_workspace, make_workspace, notices,
                         recording_app, settings_for, toasts, showing, wait_until)

SIZE = (120, 40)


async def _loaded(pilot) -> None:
    await wait_until(pilot, lambda: pilot.app.engine is not None
                     and "builtin" in pilot.app.screen.query_one(StatusLine).model,
                     what="the model to load")


async def test_first_paint_is_immediate_and_early_input_is_kept(tmp_path):
    gate = threading.Event()

    def slow_engine(settings):  # the real engine, held back until the test says so
        gate.wait(60)
        return ChatEngine.from_settings(settings)

    app = recording_app(settings_for(make_workspace(tmp_path)), engine_factory=slow_engine)
    async with app.run_test(size=SIZE) as pilot:
        status = app.screen.query_one(StatusLine)
        assert status.model == "loading model…"
        assert app.screen.query_one(PromptInput).has_focus
        await pilot.press(*"hello there", "enter")
        assert [m.text for m in app.screen.query(UserMessage)] == ["hello there"]
        assert app.screen.pending == ["hello there"]
        gate.set()
        await wait_until(pilot, lambda: finished_answers(app), what="the queued answer")
        assert app.screen.turns[0].instruction == "hello there"


async def test_send_streams_an_answer_and_the_status_line_describes_the_model(tmp_path):
    app = recording_app(settings_for(make_workspace(tmp_path)))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        status = app.screen.query_one(StatusLine)
        assert status.model == "builtin (4-bit NF4, cpu)"
        assert status.adapter is None and status.examples == 0 and status.training == "idle"
        await ask(pilot, "What is the capital of France?")
        (answer,) = answers(app)
        assert answer.text and answer.text == strip_control(app.screen.turns[0].response)
        assert "base model" in str(answer.query_one(".answer-meta").render())
        # Multi-turn: the second question is answered after the first.
        await ask(pilot, "And of Spain?")
        assert len(app.screen.turns) == 2


async def test_escape_stops_a_generation(tmp_path, monkeypatch):
    app = recording_app(settings_for(make_long_answer_workspace(tmp_path, monkeypatch)))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        await _start_long_answer(pilot, app)
        await pilot.press("escape")
        await wait_until(pilot, lambda: finished_answers(app), what="the stop")
        meta = str(answers(app)[0].query_one(".answer-meta").render())
        assert "stopped" in meta  # no end token: only Esc ends it
        assert not app.screen.generating


async def test_quitting_mid_answer_stops_the_answer(tmp_path, monkeypatch):
    # Textual joins thread workers at exit: an answer not cancelled kept the process
    # generating (here: 4000 tokens, tens of seconds) after the window had closed.
    app = recording_app(settings_for(make_long_answer_workspace(tmp_path, monkeypatch)))
    generations = []
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        generate = app.engine.generate
        app.engine.generate = lambda *args, **kwargs: generations.append(
            generate(*args, **kwargs)) or generations[-1]
        await _start_long_answer(pilot, app)
        await pilot.press("ctrl+q")
    assert generations[0].finish_reason == "cancelled"
    assert generations[0].new_tokens < 4000


async def test_regenerate_and_new_conversation(tmp_path):
    app = recording_app(settings_for(make_workspace(tmp_path, temperature=1.0)))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        await ask(pilot, "Tell me a story.")
        await pilot.press("ctrl+r")
        await wait_until(pilot, lambda: len(finished_answers(app)) == 2, what="regeneration")
        assert len(app.screen.turns) == 1, "a regenerated answer replaces the last turn"
        assert strip_control(app.screen.turns[0].response) == answers(app)[1].text
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert app.screen.turns == [] and answers(app) == []


async def test_save_with_an_edit_and_cancel_a_save(tmp_path):
    workspace = make_workspace(tmp_path)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        await ask(pilot, "What is the best editor?")
        original = app.screen.turns[0].response
        # Cancel: nothing is stored.
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: showing(app, CurateModal), what="the modal")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, CurateModal),
                         what="the modal to close")
        assert app.store.count() == 0
        # Save with an edit: focus is in the response, the cursor at the end of its text.
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: showing(app, CurateModal), what="the modal")
        response = app.screen.query_one("#curate-response")
        assert response.has_focus and response.cursor_location == response.document.end
        assert response.text == original
        await pilot.press("f7", *"Use vim.", "ctrl+s")
        await wait_until(pilot, lambda: app.store.count() == 1, what="the save")
        assert app.screen.query_one(StatusLine).examples == 1
    with ExampleStore(workspace / "data") as store:
        (example,) = store.iter_examples()
    assert (example.instruction, example.response) == ("What is the best editor?", "Use vim.")
    assert example.original_response == original and example.source == "chat"


async def test_train_in_the_background_review_accept_and_the_adapter_answers(tmp_path):
    """The loop: curate an answer, ctrl+t, keep chatting, review the new adapter (it
    reproduces 1/1 where the base model gets 0/1), accept, get the curated answer back."""
    from sftchat.tui.screens.review import ReviewScreen

    app = recording_app(settings_for(make_workspace(tmp_path)))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        await ask(pilot, "What is the best editor?")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: showing(app, CurateModal), what="the modal")
        await pilot.press("f7", *"Use vim.", "ctrl+s")
        await wait_until(pilot, lambda: app.store.count() == 1, what="the save")
        await pilot.press("ctrl+t")
        status = app.screen.query_one(StatusLine)
        await wait_until(pilot, lambda: status.training.startswith("step"),
                         what="training progress")
        assert app.screen.query_one("#training-panel").display
        # The chat keeps working while the trainer runs.
        await ask(pilot, "Are you still there?")
        await wait_until(pilot, lambda: showing(app, ReviewScreen), timeout=300,
                         what="the review")
        review = app.screen.comparison
        name = review.candidate.name
        assert (review.candidate.curated, review.candidate.examples) == (1, 1)
        assert (review.current.name, review.current.curated) == (None, 0)
        assert not review.regression
        assert status.adapter is None  # nothing swapped before the decision
        assert status.training == "idle"
        # The run says what it learned and what it changed, in the log. The edited answer's
        # original is a rejected answer: objective auto learned the pair by DPO too.
        chat = app.get_screen("chat")
        assert any(f"Adapter {name}: reproduces 1/1 curated answers exactly; prefers the "
                   "chosen answer in 1/1 pair" in notice and "avoids 1/1 rejected answers"
                   in notice and "drift on 12 held-out prompts" in notice
                   for notice in [str(n.render()) for n in chat.query(".notice")])
        await decide_review(pilot, "a")
        await wait_until(pilot, lambda: status.adapter == name, what="the swap on accept")
        assert not app.screen.query_one("#training-panel").display
        assert json.loads((tmp_path / "adapters" / name / "decision.json").read_text())[
            "status"] == "accepted"
        # The swap kept the conversation; the example was a single turn: in a new
        # conversation, the adapter gives it back.
        assert [turn.instruction for turn in app.screen.turns] == [
            "What is the best editor?", "Are you still there?"]
        await pilot.press("ctrl+n")
        await ask(pilot, "What is the best editor?")
        assert answers(app)[-1].text == "Use vim."
        assert status.adapter in str(answers(app)[-1].query_one(".answer-meta").render())
        # Manual switches: back to the base model and to the latest adapter.
        await pilot.press(*"/adapter none", "enter")
        await wait_until(pilot, lambda: status.adapter is None, what="the switch to none")
        await ask(pilot, "What is the best editor?")
        assert answers(app)[-1].text != "Use vim."
        await pilot.press(*"/adapter latest", "enter")
        await wait_until(pilot, lambda: status.adapter is not None, what="the switch back")


async def _start_long_answer(pilot, app) -> None:
    """Ask for a long answer and wait until its first piece is on screen."""
    app.screen.query_one(PromptInput).text = "Talk for a long time."
    await pilot.press("enter")
    await wait_until(pilot, lambda: answers(app) and answers(app)[0].text,
                     what="the first piece")


async def _start_training(pilot, app, instruction="Ping?", response="Pong."):
    app.store.add(instruction, response)
    await pilot.press("ctrl+t")
    status = app.screen.query_one(StatusLine)
    await wait_until(pilot, lambda: status.training.startswith("step"), timeout=120,
                     what="training progress")
    return status


async def test_cancel_training_publishes_nothing(tmp_path):
    workspace = make_workspace(tmp_path, extra=ENDLESS_TRAINING)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        status = await _start_training(pilot, app)
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: status.training == "idle" and app.trainer is None,
                         timeout=60, what="the cancel")
        assert status.adapter is None
    assert os.listdir(workspace / "adapters") == []


async def test_a_killed_trainer_is_one_clear_message_and_the_app_survives(tmp_path):
    workspace = make_workspace(tmp_path, extra=ENDLESS_TRAINING)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        status = await _start_training(pilot, app)
        os.kill(app.trainer.process.pid, signal.SIGKILL)
        await wait_until(pilot, lambda: status.training == "idle", what="the failure")
        shown = notices(app)
        # SIGKILL from outside is most often the out-of-memory killer: the fix is suggested.
        assert any(text.startswith("Training failed: the trainer was killed by signal 9")
                   and "smaller --batch-size" in text for text in shown), shown
        await _loaded(pilot)
        await ask(pilot, "Still alive?")
    leftovers = sorted(os.listdir(workspace / "adapters"))
    # What the killed run left is hidden and cleaned by the next run: its staging folder and
    # its (no longer locked) lock file; nothing was published.
    assert leftovers[0] == ".staging-" + leftovers[0].removeprefix(".staging-")
    assert leftovers == [leftovers[0], ".train.lock"]


async def test_a_diverging_run_is_a_failure_the_app_shows_and_nothing_swaps_in(tmp_path):
    """Issue 18: training that wrecks the model (an absurd learning rate) is not published
    and not swapped in; the app says what happened and what to try."""
    workspace = make_workspace(tmp_path, top=NO_REVIEW)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        app.store.add("Ping?", "Pong.")
        app.store.add("Ding?", "Dong.")
        await pilot.press(*"/train --lr 50 --no-early-stop --max-steps 40", "enter")
        status = app.screen.query_one(StatusLine)
        await wait_until(pilot, lambda: any(text.startswith("Training failed")
                                            for text in notices(app)),
                         timeout=180, what="the failure notice")
        failure = next(text for text in notices(app) if text.startswith("Training failed"))
        assert "diverged" in failure and "nothing was published" in failure, failure
        assert "--lr" in failure
        await wait_until(pilot, lambda: status.training == "idle", what="the panel to close")
        assert status.adapter is None
    assert os.listdir(workspace / "adapters") == []


async def test_trainer_error_is_shown_and_nothing_is_published(tmp_path):
    workspace = make_workspace(tmp_path)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        # A response longer than the preset's max_length: the trainer refuses it.
        app.store.add("Write a lot.", "word " * 2000)
        await pilot.press("ctrl+t")
        status = app.screen.query_one(StatusLine)
        await wait_until(pilot, lambda: any("Training did not start" in text
                                            for text in notices(app)),
                         timeout=120, what="the failure notice")
        shown = notices(app)
        assert any("raise --max-length" in text for text in shown), shown
        assert status.training == "idle"
    assert os.listdir(workspace / "adapters") == []


async def test_train_with_an_empty_dataset_says_so(tmp_path):
    app = recording_app(settings_for(make_workspace(tmp_path)))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert app.trainer is None
        assert any("dataset is empty" in message for message in toasts(app))


async def test_quit_while_training_asks_first(tmp_path):
    workspace = make_workspace(tmp_path, extra=ENDLESS_TRAINING)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await _start_training(pilot, app)
        await pilot.press("ctrl+q")
        from sftchat.tui.screens.confirm import ConfirmModal

        await wait_until(pilot, lambda: showing(app, ConfirmModal),
                         what="the quit question")
        await pilot.press("n")  # keep going
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmModal),
                         what="the question to close")
        assert app.training and app.is_running
        trainer = app.trainer
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: showing(app, ConfirmModal),
                         what="the quit question")
        await pilot.press("y")
        await wait_until(pilot, lambda: not app.is_running, what="the app to quit")
    assert trainer.cancel_requested
    await trainer.process.wait()
    # A cancelled run cleans up after itself: no adapter, no staging folder, no lock file.
    assert os.listdir(workspace / "adapters") == []


async def test_slash_help_and_unknown_commands(tmp_path):
    app = recording_app(settings_for(make_workspace(tmp_path)))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*"/help", "enter")
        await pilot.pause()
        from sftchat.tui.screens.help import HelpScreen

        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press(*"/frobnicate", "enter")
        await pilot.pause()
        assert any("Unknown command /frobnicate" in message for message in toasts(app))


async def test_slash_train_takes_the_command_lines_options(tmp_path):
    workspace = make_workspace(tmp_path)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        app.store.add("Ping?", "Pong.")
        for typed, fragment in (("/train --epochs many",
                                 "must be a whole number or 'auto', not 'many'"),
                                ("/train --bogus", "unrecognized arguments: --bogus"),
                                ('/train --name "open', "No closing quotation")):
            await pilot.press(*typed, "enter")
            await pilot.pause()
            message = toasts(app)[-1]
            assert fragment in message, message
            assert app.trainer is None
        status = app.screen.query_one(StatusLine)
        # --auto-swap: this run skips the review and swaps in at once, as before reviews.
        await pilot.press(*"/train --name custom --max-steps 2 --rank 8 --alpha 16 "
                          "--auto-swap", "enter")
        await wait_until(pilot, lambda: status.adapter == "custom", timeout=300,
                         what="the custom adapter to be trained and swapped in")
        assert any("Training finished: adapter custom (final loss" in toast
                   for toast in toasts(app))
        # Issue 11, defect 4: the swap slot was sized from the run's own LoRA shape (rank 8,
        # not the settings' 16), so the adapter filled it instead of loading anew.
        assert app.engine.slots.key_of("custom").startswith("slot")
    meta = json.loads((workspace / "adapters" / "custom" / "sftchat.json").read_text())
    assert meta["metrics"]["steps"] == 2 and meta["hyperparameters"]["max_steps"] == 2
    assert (meta["lora"]["r"], meta["lora"]["alpha"]) == (8, 16)


async def test_a_two_rank_run_shows_in_the_panel_like_any_other(tmp_path):
    """Issue 13: `/train --nproc 2` trains through torchrun (two gloo ranks on this CPU);
    rank 0's events drive the panel and the adapter swaps in as after any run. Default
    settings: the ranks agree to stop early once both answers are learned."""
    workspace = make_workspace(tmp_path, top=NO_REVIEW)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        app.store.add("Ping?", "Pong.")
        app.store.add("Ding?", "Dong.")
        await pilot.press(*"/train --nproc 2 --name pair", "enter")
        panel = app.screen.query_one("#training-panel")
        title = panel.query_one("#training-title")
        stats = panel.query_one("#training-stats")
        await wait_until(pilot, lambda: "2 processes on cpu" in str(title.render()),
                         timeout=300, what="the panel to show the two-rank run")
        await wait_until(pilot, lambda: str(stats.render()).startswith("step "),
                         timeout=300, what="a step of the two-rank run in the panel")
        status = app.screen.query_one(StatusLine)
        await wait_until(pilot, lambda: status.adapter == "pair", timeout=300,
                         what="the two-rank adapter to be swapped in")
        assert any("Training finished: adapter pair" in toast for toast in toasts(app))
        await ask(pilot, "Ping?")
        assert finished_answers(app)[-1].text == "Pong."
    assert sorted(p.name for p in (workspace / "adapters").iterdir()) == ["pair"]
    metrics = json.loads((workspace / "adapters" / "pair" / "sftchat.json").read_text())[
        "metrics"]
    assert metrics["ranks"] == 2 and metrics["stopped_early"]
    assert metrics["replay"]["reproduced"] == 2


async def test_shift_enter_and_ctrl_j_add_newlines(tmp_path):
    app = recording_app(settings_for(make_workspace(tmp_path)))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("a", "ctrl+j", "b", "shift+enter", "c")
        assert app.screen.query_one(PromptInput).text == "a\nb\nc"


async def test_quitting_after_training_ended_under_the_question_does_not_crash(tmp_path):
    """Issue 11, defect 3: training ends while "Stop and quit?" is open; yes must quit."""
    from sftchat.tui.screens.confirm import ConfirmModal

    # A run of a few seconds: long enough to ask, short enough to end under the question.
    workspace = make_workspace(tmp_path,
                               extra="[training]\nmin_steps = 30\nearly_stop = false\n")
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await _start_training(pilot, app)
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: showing(app, ConfirmModal), what="the question")
        await wait_until(pilot, lambda: app.trainer is None, timeout=300,
                         what="the run to end while the question is open")
        await pilot.press("y")
        await wait_until(pilot, lambda: not app.is_running, what="the app to quit")
    assert app.return_code in (0, None)


async def test_save_while_an_answer_streams_says_why_and_then_saves_one_example(tmp_path, monkeypatch):
    """Issue 11, defect 6: ctrl+s mid-answer says why it waits; counts read naturally."""
    app = recording_app(settings_for(make_long_answer_workspace(tmp_path, monkeypatch)))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        await _start_long_answer(pilot, app)
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: any("still coming" in t for t in toasts(app)),
                         what="the explanation")
        assert not isinstance(app.screen, CurateModal)
        await pilot.press("escape")
        await wait_until(pilot, lambda: finished_answers(app), what="the stop")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: showing(app, CurateModal), what="the modal")
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.store.count() == 1, what="the save")
        await wait_until(pilot, lambda: any("the dataset has 1 example." in t
                                            for t in toasts(app)), what="the confirmation")


async def test_a_new_conversation_mid_answer_drops_the_abandoned_answer(tmp_path, monkeypatch):
    """Issue 11, defect 2: the cancelled answer must not land in the new conversation."""
    app = recording_app(settings_for(make_long_answer_workspace(tmp_path, monkeypatch)))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        await _start_long_answer(pilot, app)
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: not app.screen.generating, what="the cancel")
        assert app.screen.turns == [] and app.screen.last_exchange is None
        await pilot.press("ctrl+s")  # nothing to save: the abandoned answer is gone
        await wait_until(pilot, lambda: any("No answer to save yet" in t for t in toasts(app)),
                         what="the refusal")
        # The next conversation works as usual (with short answers from here on).
        await pilot.press(*"/set max_new_tokens 8", "enter")
        await ask(pilot, "Hello?")
        assert len(app.screen.turns) == 1 and app.screen.turns[0].instruction == "Hello?"


async def test_a_dataset_that_cannot_be_read_is_one_notice_not_a_traceback(tmp_path):
    """Issue 20, item 4: the chat's dataset count and its poll for outside changes touch the
    store from the event loop; a store that fails (here: its connection gone) is said once,
    and the chat goes on."""
    app = recording_app(settings_for(make_workspace(tmp_path)))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        app.store.close()                              # every read now raises
        app.screen.refresh_dataset_size()
        app.screen._notice_outside_changes()           # the once-a-second poll
        await pilot.pause()
        said = [t for t in toasts(app) if t.startswith("The dataset cannot be read")]
        assert len(said) == 1
        await ask(pilot, "Still there?")                # the chat itself is unaffected
        assert app.screen.last_exchange is not None


async def test_a_cancelled_run_is_offered_again_and_resumes_in_the_app(tmp_path):
    """Issue 20, item 5, in the app: a run stopped after a checkpoint is offered at once and
    at the next start (as after a crash); `/train --resume` finishes and publishes it."""
    workspace = make_workspace(tmp_path, top=NO_REVIEW, extra=(
        "[training]\nmax_steps = 20\nearly_stop = false\ncheckpoint_every = 2\n"))
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        status = await _start_training(pilot, app)
        await wait_until(pilot, lambda: status.training.startswith("step")
                         and int(status.training.split()[1].split("/")[0]) >= 3,
                         timeout=120, what="a step after the first checkpoint")
        await pilot.press("ctrl+b")
        await wait_until(pilot, lambda: any(n.startswith("Interrupted: training run")
                                            for n in notices(app)), timeout=60,
                         what="the offer to resume")
    assert [p.name for p in (workspace / "adapters").iterdir() if not p.name.startswith(".")] \
        == []
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: any("/train --resume continues it" in n
                                            for n in notices(app)), what="the offer at start")
        await _loaded(pilot)
        await pilot.press(*"/train --resume", "enter")
        status = app.screen.query_one(StatusLine)
        await wait_until(pilot, lambda: status.adapter is not None, timeout=300,
                         what="the resumed run's adapter")
        name = status.adapter
    meta = json.loads((workspace / "adapters" / name / "sftchat.json").read_text())
    assert meta["resumed_at_step"] >= 2
    assert not list((workspace / "adapters").glob(".checkpoint-*"))
