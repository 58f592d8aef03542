"""Issue 21: does a model still give an answer the user rejected? `dataset.preferences`
(`first_sentence`, `telltale`, `gives`) decides it; `adapters.comparison` counts it per model
and calls a bad answer that comes back a regression. Here the rules, on fixed answers; the
same comparison on the real model and adapters is in tests/tui/test_review_bad_answers.py.
"""

from __future__ import annotations

import json

from sftchat.adapters.comparison import (
    REJECTED_SAMPLE, Comparison, ModelResult, latest_rejected, pair_rejected,
)
from sftchat.dataset.preferences import first_sentence, gives, telltale
from sftchat.dataset.store import Example, Rejected


def _rejected(id: int, response: str, example_id: int | None = None,
              instruction: str = "Capital of France?") -> Rejected:
    return Rejected(id, example_id, instruction, "", response, "bad" if example_id is None
                    else "edit", 0.0)


# ------------------------------------------------------------------ first sentence, telltale


def test_first_sentence_ends_at_a_sentence_mark_or_a_line_break():
    assert first_sentence("  Lyon is big. It is old.") == "Lyon is big."
    assert first_sentence("Wow!! That is it.") == "Wow!!"
    assert first_sentence("Is it? Yes.") == "Is it?"
    assert first_sentence("It costs 3.5 euros. Cheap.") == "It costs 3.5 euros."  # no space
    assert first_sentence("Here is a list\n- one\n- two") == "Here is a list"
    assert first_sentence("\nAfter a blank line. More.") == "After a blank line."
    assert first_sentence("No end at all") == "No end at all"


def test_the_telltale_of_an_edit_that_changed_only_the_end_goes_past_the_first_sentence():
    rejected = "Paris is the capital. It has 2 million people."
    chosen = "Paris is the capital. It has 2.1 million people."
    assert telltale(rejected) == "Paris is the capital."
    assert telltale(rejected, chosen) == "Paris is the capital. It has 2 m"
    assert gives(rejected, rejected, chosen)
    assert not gives(chosen, rejected, chosen)
    # Stopping after the first sentence, which both share, is not the rejected answer.
    assert not gives("Paris is the capital.", rejected, chosen)
    # With no replacement the first sentence alone gives it away.
    assert gives("Paris is the capital. Lovely city.", rejected)


def test_an_edit_that_changed_the_first_sentence_keeps_the_first_sentence_as_telltale():
    rejected, chosen = "Lyon, I think. It is in France.", "Paris. It is in France."
    assert telltale(rejected, chosen) == "Lyon, I think."
    assert gives("Lyon, I think. Or Marseille.", rejected, chosen)
    assert not gives("Lyon", rejected, chosen)       # cut before the sentence's end
    assert not gives(chosen, rejected, chosen)


def test_a_rejected_answer_that_is_the_start_of_the_chosen_one_is_given_only_by_stopping():
    rejected, chosen = "Paris.", "Paris. It is in France."
    assert gives("Paris.", rejected, chosen)
    assert gives("  Paris.\n", rejected, chosen)
    assert not gives(chosen, rejected, chosen)
    assert not gives("Paris. Or Lyon.", rejected, chosen)


def test_an_answer_with_no_sentence_end_is_given_only_whole():
    rejected = "Lyon is the capital"
    assert gives("Lyon is the capital of France", rejected)
    assert not gives("Lyon is the", rejected)
    assert not gives("", rejected)
    assert gives("  Lyon is the capital", "  " + rejected)   # leading space is no difference


def test_a_line_break_ends_the_telltale():
    rejected = "Sure\nHere is a poem about cats."
    assert telltale(rejected) == "Sure"
    assert gives("Sure\nSomething else entirely.", rejected)
    assert not gives("Certainly\nHere is a poem about cats.", rejected)


# ------------------------------------------------------------------ the comparison


def _result(name, bad_answers, rejected) -> ModelResult:
    avoided = sum(not gives(got, r.response, chosen) for got, (r, chosen)
                  in zip(bad_answers, rejected))
    return ModelResult(name, 5, 5, [], 0, [], [], None, bad_answers=bad_answers,
                       avoided=avoided)


def test_a_bad_answer_the_candidate_gives_and_the_current_model_avoids_is_a_regression():
    rejected = [(_rejected(3, "Lyon."), None),
                (_rejected(4, "Red, green and blue.", example_id=2, instruction="Colours?"),
                 "Red, yellow and blue."),
                (_rejected(7, "Marseille. Big port."), None)]
    current = _result("v1", ["Paris.", "Red, green and blue.", "Marseille. Port."], rejected)
    candidate = _result("v2", ["Lyon. Yes.", "Red, yellow and blue.", "Marseille. Big."],
                        rejected)
    comparison = Comparison(current, candidate, [], rejected=rejected)
    assert (current.avoided, candidate.avoided) == (1, 1)
    assert [comparison.bad_answer_status(i) for i in range(3)] == ["given", "avoided", "given"]
    assert comparison.newly_given == [0]              # the one v1 avoided
    assert comparison.regression
    assert "avoids 1/3 bad answers (v1: 1/3)" in comparison.verdict()
    report = json.loads(json.dumps(comparison.to_dict()))
    assert [(r["id"], r["chosen"], r["status"], r["current_status"])
            for r in report["rejected"]] == [(3, None, "given", "avoided"),
                                              (4, "Red, yellow and blue.", "avoided", "given"),
                                              (7, None, "given", "given")]
    assert report["newly_given"] == [3] and report["regression"] is True
    assert report["candidate"]["bad_answers"][0] == "Lyon. Yes."
    assert report["current"]["avoided"] == 1


def test_no_regression_when_the_candidate_avoids_what_the_current_model_gave():
    rejected = [(_rejected(1, "Lyon."), None)]
    comparison = Comparison(_result(None, ["Lyon."], rejected),
                            _result("v2", ["Paris."], rejected), [], rejected=rejected)
    assert comparison.newly_given == [] and not comparison.regression
    assert "avoids 1/1 bad answers (base model: 0/1)" in comparison.verdict()
    # Without rejected answers the verdict says nothing about them.
    assert "bad answers" not in Comparison(_result(None, [], []), _result("v2", [], []),
                                           []).verdict()


def test_rejected_answers_pair_with_their_example_and_only_the_latest_are_kept():
    examples = [Example(2, "Colours?", "", "Red, yellow and blue.", None, "cli", 0.0, 0.0)]
    pairs = pair_rejected(examples, [_rejected(1, "Lyon."),
                                     _rejected(2, "Red.", example_id=2, instruction="Colours?")])
    assert [(r.id, chosen) for r, chosen in pairs] == [(1, None), (2, "Red, yellow and blue.")]
    many = [(_rejected(i, f"Answer {i}."), None) for i in range(REJECTED_SAMPLE + 5, 0, -1)]
    kept = latest_rejected(many)
    assert [r.id for r, _ in kept] == list(range(6, REJECTED_SAMPLE + 6))
