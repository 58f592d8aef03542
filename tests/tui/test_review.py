"""Issue 12 in the app, under Pilot on the built-in model: review before swap (reject, pins
and their diffs), pin and bad-answer keys, compare and pick, rollback; snapshots of the review
and the compare screens. Accepting a review after a real in-app training run is in
test_chat_app.py (the loop).

Here a run's end is the trainer's real `finished` event posted to the chat for an adapter
that is already on disk (the session's trained `first`): the review itself — the replay of
`first` against the model answering — is real.
"""

from __future__ import annotations

import json
import shutil

from cli_helpers import sftchat

from sftchat.dataset.pins import Pin
from sftchat.dataset.store import ExampleStore
from sftchat.adapters.comparison import Comparison, ModelResult
from sftchat.tui.messages import TrainingEnded
from sftchat.tui.screens.compare import CompareScreen
from sftchat.tui.screens.review import AnswerDiffScreen, ReviewScreen
from sftchat.tui.widgets.status_line import StatusLine
from tui_helpers import (ask, decide_review, make_workspace, recording_app, settings_for, toasts,
                         showing, wait_until)

SIZE = (140, 45)
FINISHED = {"event": "finished", "name": "first", "final_loss": 0.01}


def _workspace_with_first(tmp_path, trained_workspace):
    workspace = make_workspace(tmp_path / "ws", max_new_tokens=24)
    shutil.copytree(trained_workspace / "adapters", workspace / "adapters")
    with ExampleStore(trained_workspace / "data") as source, \
            ExampleStore(workspace / "data") as target:
        for example in source.iter_examples():
            target.add(example.instruction, example.response, source="cli")
    return workspace


async def _loaded(pilot) -> StatusLine:
    await wait_until(pilot, lambda: pilot.app.engine is not None, what="the model")
    return pilot.app.screen.query_one(StatusLine)


async def test_review_with_a_pin_then_reject_keeps_the_current_model(tmp_path,
                                                                     trained_workspace):
    from conftest import CURATED

    workspace = _workspace_with_first(tmp_path, trained_workspace)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        status = await _loaded(pilot)
        # Pin an unrelated answer of the base model, and flag another as bad.
        await ask(pilot, "Tell me about rivers.")
        base_answer = app.screen.last_exchange.response
        await pilot.press("ctrl+k")
        await wait_until(pilot, lambda: any(t.startswith("Pinned as pin #1")
                                            for t in toasts(app)), what="the pin")
        await ask(pilot, "Tell me a joke.")
        await pilot.press("ctrl+x")
        await wait_until(pilot, lambda: any(t.startswith("Kept as a bad answer")
                                            for t in toasts(app)), what="the bad answer")
        # /pin N pins an earlier turn of the conversation (the same prompt: the same pin).
        await pilot.press(*"/pin 3", "enter")
        await wait_until(pilot, lambda: any(t.startswith("Usage: /pin [N]") for t in toasts(app)),
                         what="the usage of /pin")
        pinned_before = len([t for t in toasts(app) if t.startswith("Pinned as pin #1")])
        await pilot.press(*"/pin 1", "enter")
        await wait_until(pilot, lambda: len([t for t in toasts(app) if t.startswith(
            "Pinned as pin #1")]) > pinned_before, what="the pin of turn 1")
        assert not toasts(app)[-1].endswith("without the earlier turns of this conversation.")

        app.screen.post_message(TrainingEnded(FINISHED))
        await wait_until(pilot, lambda: showing(app, ReviewScreen), timeout=120,
                         what="the review")
        review = app.screen.comparison
        assert (review.candidate.curated, review.candidate.examples) == (len(CURATED),
                                                                         len(CURATED))
        assert review.current.curated == 0
        assert [pin.instruction for pin in review.pins] == ["Tell me about rivers."]
        # The chat cut the pinned answer at its token limit; the replay goes further, and a
        # model keeps the pin when its answer starts with the accepted one.
        assert review.current.pin_answers[0].startswith(base_answer)
        assert review.current.pins_kept == 1
        changed = not review.candidate.pin_answers[0].startswith(base_answer)
        assert review.regression == changed
        # Open the pinned prompt: both answers in full, side by side.
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, AnswerDiffScreen),
                         what="the pinned prompt's diff")
        await pilot.press("escape")
        await wait_until(pilot, lambda: showing(app, ReviewScreen),
                         what="back to the review")

        await decide_review(pilot, "r")
        await wait_until(pilot, lambda: any(t.startswith("Rejected first") for t in toasts(app)),
                         what="the rejection")
        assert status.adapter is None and app.engine.active_adapter is None
        # A rejected candidate leaves memory at once (it stays on disk).
        await wait_until(pilot, lambda: "first" not in app.engine.loaded_adapters,
                         what="the rejected adapter unloaded")
        await ask(pilot, CURATED[0][0])
        assert app.screen.last_exchange.response != CURATED[0][1]  # the base still answers

    assert json.loads((workspace / "adapters" / "first" / "decision.json").read_text())[
        "status"] == "rejected"
    with ExampleStore(workspace / "data") as store:
        assert [r.source for r in store.iter_rejected()] == ["bad"]
    # `sftchat eval` gives the review's numbers.
    result = sftchat(workspace, "eval", "--adapter", "none", "--adapter", "first", "--json",
                     check=True, in_process=True)
    evaluated = json.loads(result.stdout)
    assert evaluated["candidate"]["curated"] == review.candidate.curated
    assert evaluated["current"]["curated"] == review.current.curated
    assert evaluated["candidate"]["pin_answers"] == review.candidate.pin_answers
    assert evaluated["regression"] == review.regression
    # `adapters list` shows the decision.
    listed = json.loads(sftchat(workspace, "adapters", "list", "--json", check=True,
                                in_process=True).stdout)
    assert [(row["name"], row["decision"]) for row in listed] == [("first", "rejected")]


async def test_compare_pick_saves_the_example_with_the_others_rejected_and_rollback(
        tmp_path, trained_workspace):
    from conftest import CURATED

    workspace = _workspace_with_first(tmp_path, trained_workspace)
    app = recording_app(settings_for(workspace))
    question, curated = CURATED[2]
    async with app.run_test(size=SIZE) as pilot:
        status = await _loaded(pilot)
        await pilot.press(*"/compare", "enter")
        await wait_until(pilot, lambda: any("No answer to compare yet" in t
                                            for t in toasts(app)), what="nothing to compare")
        await pilot.press(*"/adapter first", "enter")
        await wait_until(pilot, lambda: status.adapter == "first", what="the switch")
        await ask(pilot, question)
        assert app.screen.last_exchange.response == curated
        await pilot.press("ctrl+y")
        await wait_until(pilot, lambda: showing(app, CompareScreen),
                         what="the comparison")
        compare = app.screen
        assert compare.models == [None, "first"]
        await wait_until(pilot, lambda: all(compare.done), what="both answers")
        assert compare.errors == [None, None], compare.errors
        assert compare.answers[1] == curated and compare.answers[0] != curated
        base_answer = compare.answers[0]
        await pilot.press("2")
        await wait_until(pilot, lambda: any(t.startswith("Saved example #6") for t in toasts(app)),
                         what="the pick to be saved")
        # The adapter answering is unchanged by the comparison.
        assert app.engine.active_adapter == "first"
        # Roll back: the base model answered before `first`.
        await pilot.press(*"/adapter previous", "enter")
        await wait_until(pilot, lambda: status.adapter is None, what="the rollback")
        await pilot.press(*"/adapter previous", "enter")
        await wait_until(pilot, lambda: any("No adapter answered before" in t
                                            for t in toasts(app)), what="the end of history")

    with ExampleStore(workspace / "data") as store:
        example = store.get(6)
        assert (example.instruction, example.response) == (question, curated)
        assert [(r.response, r.source) for r in store.rejected_for(6)] == \
            [(base_answer, "compare")]


async def test_compare_with_an_adapter_deleted_meanwhile_says_so_in_its_column(
        tmp_path, trained_workspace):
    """Issue 20: an adapter deleted during a compare raised into Textual (or left "…"
    forever); now its column says why and the others can still be picked."""
    from conftest import CURATED

    workspace = _workspace_with_first(tmp_path, trained_workspace)
    shutil.copytree(workspace / "adapters" / "first", workspace / "adapters" / "gone")
    app = recording_app(settings_for(workspace))
    question, curated = CURATED[2]
    async with app.run_test(size=SIZE) as pilot:
        await _loaded(pilot)
        shutil.rmtree(workspace / "adapters" / "gone")     # `sftchat adapters rm` elsewhere
        app.push_screen(CompareScreen(app.engine, question, [None, "gone", "first"]))
        await wait_until(pilot, lambda: showing(app, CompareScreen)
                         and all(app.screen.done), what="every column")
        compare = app.screen
        assert compare.errors[1] and "no adapter named 'gone'" in compare.errors[1]
        assert compare.errors[0] is None and compare.answers[2] == curated
        await pilot.press("2")
        await wait_until(pilot, lambda: any("2 gave no answer" in t for t in toasts(app)),
                         what="the refusal")
        assert app.screen is compare
        await pilot.press("3")
        await wait_until(pilot, lambda: not isinstance(app.screen, CompareScreen),
                         what="the pick")


def _comparison() -> Comparison:
    """A fixed comparison (no model) for the snapshot."""
    pins = [Pin(1, "What is the capital of France?", "", "Paris.", None, 0.0),
            Pin(2, "Name a primary colour.", "", "Red.", None, 0.0)]
    current = ModelResult("v1", 4, 5, [5], 2, ["Paris.", "Red."], [], None)
    candidate = ModelResult("v2", 5, 5, [], 1, ["Paris.", "Blue, I think."], [],
                            {"perplexity_ratio": 1.04})
    return Comparison(current, candidate, pins)


def test_snapshot_review(snap_compare):
    from textual.app import App

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(ReviewScreen(_comparison()))

    assert snap_compare(Host(), terminal_size=(120, 30))


class _FixedAnswers:
    """Stands in for the engine in the compare snapshot only: the built-in model's random
    weights give answers that change with the number of CPU threads (near ties), which a
    picture cannot follow. The compare flow on the real engine is tested above."""

    def __init__(self, answers: dict):
        self.answers = answers

    def generate(self, question, history=(), system="", settings=None, cancel=None,
                 adapter=None):
        return _FixedGeneration(self.answers[None if adapter == "none" else adapter])


class _FixedGeneration:
    def __init__(self, text: str):
        self.text = text

    def __iter__(self):
        return iter([self.text])


def test_snapshot_compare(snap_compare):
    from textual.app import App

    engine = _FixedAnswers({None: "The capital of France is Lyon, I believe.", "v1": "Paris.",
                            "v2": "Paris, on the Seine."})

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(CompareScreen(engine, "What is the capital of France?",
                                           [None, "v1", "v2"]))

    async def answered(pilot):
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, CompareScreen)
                         and all(pilot.app.screen.done), what="the answers")
        await pilot.pause()

    assert snap_compare(Host(), terminal_size=(130, 30), run_before=answered)


async def test_a_key_typed_as_the_review_opens_does_not_decide(monkeypatch):
    """Found by benchmarks/ui_latency.py: the review opened while "staying" was being typed
    in the chat, and its "a" accepted the adapter. A decision needs a pause first."""
    from textual.app import App

    from sftchat.tui.screens import review

    class Host(App):
        decided = "not yet"

        def on_mount(self) -> None:
            self.push_screen(ReviewScreen(_comparison()),
                             lambda decision: setattr(self, "decided", decision))

    monkeypatch.setattr(review, "DECISION_PAUSE_S", 3600)   # every key is "still typing"
    app = Host()
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_until(pilot, lambda: showing(app, ReviewScreen))
        await pilot.press("s", "t", "a", "y", "i", "n", "g")
        await pilot.pause()
        assert app.decided == "not yet" and isinstance(app.screen, ReviewScreen)
        monkeypatch.setattr(review, "DECISION_PAUSE_S", 0)  # the user paused
        await pilot.press("a")
        await wait_until(pilot, lambda: app.decided == "accept", what="the decision")
