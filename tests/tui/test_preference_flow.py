"""Issue 21 in the app, as a user does it, under Pilot on the built-in model: ask, mark the
answer bad (ctrl+x), train (ctrl+t: the real trainer subprocess, default settings, objective
auto), the review shows the bad answer avoided, accept — and asked again, the model does not
give the bad answer back."""

from __future__ import annotations

import json

from sftchat.dataset.preferences import gives
from sftchat.dataset.store import ExampleStore
from sftchat.tui.screens.review import ReviewScreen
from sftchat.tui.widgets.status_line import StatusLine
from tui_helpers import (answers, ask, decide_review, make_workspace, recording_app,
                         settings_for, showing, wait_until)

SIZE = (140, 45)
QUESTION = "Tell me a joke."


async def test_a_bad_answer_marked_in_the_chat_does_not_come_back(tmp_path):
    workspace = make_workspace(tmp_path, max_new_tokens=24)   # greedy: its own answer
    with ExampleStore(workspace / "data") as store:   # something to imitate as well
        store.add("What is the best editor?", "Use vim.")
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.engine is not None, timeout=120,
                         what="the model")
        await ask(pilot, QUESTION)
        bad = answers(app)[-1].text
        await pilot.press("ctrl+x")
        await wait_until(pilot, lambda: len(list(app.store.iter_rejected())) == 1,
                         what="the bad answer kept")
        kept = next(app.store.iter_rejected())
        assert (kept.instruction, kept.response, kept.example_id, kept.source) == \
            (QUESTION, bad, None, "bad")

        await pilot.press("ctrl+t")
        await wait_until(pilot, lambda: showing(app, ReviewScreen), timeout=300,
                         what="the review")
        review = app.screen.comparison
        name = review.candidate.name
        meta = json.loads((workspace / "adapters" / name / "sftchat.json").read_text())
        assert meta["dataset"]["rejected"]["avoid"] == 1      # auto: kto on the bad answer
        # The base gives its own answer; the new adapter does not.
        assert [answer.id for answer, _ in review.rejected] == [kept.id]
        assert (review.current.avoided, review.candidate.avoided) == (0, 1)
        assert review.bad_answer_status(0) == "avoided" and not review.regression
        summary = str(app.screen.query_one("#review-summary").render())
        assert "Bad answers avoided: 1/1" in summary
        assert "Its training run: avoids 1/1 rejected answers" in summary
        await decide_review(pilot, "a")
        status = app.screen.query_one(StatusLine)
        await wait_until(pilot, lambda: status.adapter == name, what="the swap on accept")

        await pilot.press("ctrl+n")
        await ask(pilot, QUESTION)
        again = answers(app)[-1].text
        assert not gives(again, bad), (bad, again)
        await pilot.press("ctrl+n")   # (curated as a first turn: asked as one)
        await ask(pilot, "What is the best editor?")
        assert answers(app)[-1].text == "Use vim."
