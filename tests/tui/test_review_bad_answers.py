"""Issue 21 in the review and `sftchat eval`: do the models still give the answers the user
rejected? Under Pilot on the built-in model, the review of the session's trained adapter
`first` (taught CURATED) against the base model, after a run's real `finished` event: the
rejected answers are read from the workspace's store by the chat, replayed by both models
for real, and shown; then `sftchat eval` on the same workspace gives the same figures.

The rejected answers are chosen so that each model's verdict is certain: "Paris." marked bad
(`first` answers exactly that, the base model's random weights do not), the original of an
edit whose replacement `first` learned, and an answer holding markup and an escape sequence
that neither model gives (it must show literally).
"""

from __future__ import annotations

import json
import shutil

from cli_helpers import sftchat
from conftest import CURATED
from textual.widgets import DataTable, Label, Static

from sftchat.dataset.store import ExampleStore
from sftchat.tui.messages import TrainingEnded
from sftchat.tui.screens.review import AnswerDiffScreen, ReviewScreen
from tui_helpers import make_workspace, recording_app, settings_for, showing, wait_until

SIZE = (140, 45)
FINISHED = {"event": "finished", "name": "first", "final_loss": 0.01}
MARKUP = "[red]Knock[/red] knock\x1b[2J. Who is there?"


def _workspace(tmp_path, trained_workspace):
    """The trained adapter, the CURATED examples (ids 1-5), and three rejected answers."""
    workspace = make_workspace(tmp_path / "ws", max_new_tokens=24)
    shutil.copytree(trained_workspace / "adapters", workspace / "adapters")
    with ExampleStore(workspace / "data") as store:
        for instruction, response in CURATED:
            store.add(instruction, response, source="cli")
        store.add_rejected(CURATED[0][0], "Paris.")                        # bad, id 1
        store.add_rejected(CURATED[2][0], "Red, green and blue.", source="edit",
                           example_id=3)                                   # id 2
        store.add_rejected("Tell me a joke.", MARKUP)                      # bad, id 3
    return workspace


def _texts(screen, selector: str) -> list[str]:
    return [str(widget.content) for widget in screen.query(selector)]


async def test_review_shows_bad_answers_given_again_and_eval_counts_them(tmp_path,
                                                                          trained_workspace):
    workspace = _workspace(tmp_path, trained_workspace)
    app = recording_app(settings_for(workspace))
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.engine is not None, what="the model")
        app.screen.post_message(TrainingEnded(FINISHED))
        await wait_until(pilot, lambda: showing(app, ReviewScreen), timeout=120,
                         what="the review")
        review = app.screen.comparison
        # Read from the store, each paired with its example's answer.
        assert [(bad.id, chosen) for bad, chosen in review.rejected] == \
            [(1, None), (2, "Red, yellow and blue."), (3, None)]
        assert review.candidate.bad_answers[:2] == ["Paris.", "Red, yellow and blue."]
        assert [review.bad_answer_status(i) for i in range(3)] == ["given", "avoided",
                                                                   "avoided"]
        assert (review.current.avoided, review.candidate.avoided) == (3, 2)
        assert review.newly_given == [0] and review.regression  # more curated, yet one

        summary = str(app.screen.query_one("#review-summary", Static).content)
        assert "Bad answers avoided: 2/3 (answering now, base model: 3/3)" in summary
        assert "⚠ Regression: a bad answer came back" in summary
        assert "No pinned prompts yet" in summary
        # No pins, yet the table shows: one row per bad answer.
        table = app.screen.query_one("#review-pins", DataTable)
        await wait_until(pilot, lambda: table.row_count == 3, what="the table's rows")
        assert table.display
        assert [str(column.label) for column in table.columns.values()][1] == "prompt"
        status, prompt, _, new = table.get_row_at(0)
        assert (str(status), status.style, str(prompt), str(new)) == \
            ("given", "bold red", CURATED[0][0], "Paris.")
        assert (str(table.get_row_at(1)[0]), table.get_row_at(1)[0].style) == ("avoided",
                                                                               "green")

        # Enter on a bad answer: the rejected answer in full, labelled as such.
        await pilot.press("enter")
        await wait_until(pilot, lambda: showing(app, AnswerDiffScreen),
                         what="the bad answer's diff")
        labels = _texts(app.screen, ".field-label")
        assert labels[0] == "Bad answer (rejected)" and "Accepted answer (pinned)" not in labels
        assert not any(label.startswith("Chosen answer") for label in labels)
        assert _texts(app.screen, ".diff-text")[0] == "Paris."
        await pilot.press("escape")
        await wait_until(pilot, lambda: showing(app, ReviewScreen), what="the review")
        # The edit's original: the chosen answer is shown too.
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: showing(app, AnswerDiffScreen),
                         what="the edit's diff")
        assert _texts(app.screen, ".field-label")[:2] == ["Bad answer (rejected)",
                                                          "Chosen answer (in the dataset)"]
        assert _texts(app.screen, ".diff-text")[:2] == ["Red, green and blue.",
                                                        "Red, yellow and blue."]
        await pilot.press("escape")
        await wait_until(pilot, lambda: showing(app, ReviewScreen), what="the review")
        # Untrusted text shows literally: markup as typed, the escape sequence gone.
        await pilot.press("down", "enter")
        await wait_until(pilot, lambda: showing(app, AnswerDiffScreen),
                         what="the third diff")
        shown = _texts(app.screen, ".diff-text")[0]
        assert shown.startswith("[red]Knock[/red] knock") and "\x1b" not in shown
        assert str(app.screen.query_one(".diff-title", Label).content) == \
            "Prompt: Tell me a joke."
        await pilot.press("escape")
        await wait_until(pilot, lambda: showing(app, ReviewScreen), what="the review")
        await pilot.press("escape")                                         # decide later
        await wait_until(pilot, lambda: not isinstance(app.screen, ReviewScreen),
                         what="the review closed")

    # `sftchat eval` measures the same bad answers the same way.
    report = json.loads(sftchat(workspace, "eval", "--adapter", "none", "--adapter", "first",
                                "--json", check=True, in_process=True).stdout)
    assert [(r["id"], r["chosen"], r["status"], r["current_status"]) for r in report["rejected"]] \
        == [(1, None, "given", "avoided"), (2, "Red, yellow and blue.", "avoided", "avoided"),
            (3, None, "avoided", "avoided")]
    assert report["candidate"]["bad_answers"] == review.candidate.bad_answers
    assert report["current"]["bad_answers"] == review.current.bad_answers
    assert (report["current"]["avoided"], report["candidate"]["avoided"]) == (3, 2)
    assert report["newly_given"] == [1] and report["regression"] is True
    # Its human output says it per model, names the answer that came back, and fails on it.
    result = sftchat(workspace, "eval", "--fail-on", "regression", in_process=True)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("base model") and lines[0].endswith("bad answers avoided 3/3")
    assert lines[1].startswith("first") and lines[1].endswith("bad answers avoided 2/3")
    assert lines[2:5] == [f"bad answer 1 came back: {CURATED[0][0]}", "  rejected:  Paris.",
                          "  candidate: Paris."]
    assert "avoids 2/3 bad answers (base model: 3/3)" in result.stderr.splitlines()[-1]
    assert result.stderr.splitlines()[-1].startswith("sftchat: regression: first: ")
