"""Review a new adapter before it answers: is it better than the one answering now?

`ReviewScreen` shows a `review.Comparison` (computed in the background by the chat screen):
how many curated answers each model reproduces, the drift its training measured, and one
row per pinned prompt — kept (the accepted answer), same (as the current model answers) or
changed — with the current and the new answer, then one row per bad answer (a rejected
answer: avoided, or given again). Enter opens a row (`AnswerDiffScreen`: the pinned or the
rejected answer, both models' answers in full, the differences highlighted). `a` accepts (the
new adapter answers from the next turn), `r` rejects (the current one keeps answering; the
new one stays on disk, marked rejected), Escape decides later.

Model text is untrusted: every cell and line is a `rich.text.Text`, never markup.
"""

from __future__ import annotations

import difflib
import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label, Static

from sftchat.adapters.comparison import Comparison
from sftchat.text import one_line, strip_control
from sftchat.training.events import preference_summary

CELL_WIDTH = 34
# A key decides the review only after this long without keys (since it opened, or the last).
DECISION_PAUSE_S = 0.5


def word_diff(old: str, new: str) -> tuple[Text, Text]:
    """`old` and `new` as Text, the words only in `old` struck red, those only in `new`
    green: what changed, readable at a glance."""
    old_words, new_words = old.split(" "), new.split(" ")
    left, right = Text(), Text()
    matcher = difflib.SequenceMatcher(a=old_words, b=new_words, autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        old_part = strip_control(" ".join(old_words[a0:a1]))
        new_part = strip_control(" ".join(new_words[b0:b1]))
        if tag == "equal":
            left.append(old_part + " ")
            right.append(new_part + " ")
            continue
        if old_part:
            left.append(old_part, style="bold red strike")
            left.append(" ")
        if new_part:
            right.append(new_part, style="bold green")
            right.append(" ")
    left.rstrip()
    right.rstrip()
    return left, right


class AnswerDiffScreen(ModalScreen[None]):
    """One prompt: the accepted answer (pinned) or the rejected one (with the answer chosen
    instead, if any), the current model's and the new adapter's."""

    CSS_PATH = "review.tcss"
    BINDINGS = [Binding("escape,enter,q", "close", "Back")]

    def __init__(self, prompt: str, accepted: str, current: tuple[str, str],
                 candidate: tuple[str, str], label: str = "Accepted answer (pinned)",
                 chosen: str | None = None) -> None:
        super().__init__()
        self.prompt, self.accepted, self.label, self.chosen = prompt, accepted, label, chosen
        self.current, self.candidate = current, candidate

    def compose(self) -> ComposeResult:
        (current_label, current_answer), (new_label, new_answer) = self.current, self.candidate
        old_text, new_text = word_diff(current_answer, new_answer)
        with VerticalScroll(id="diff-box"):
            yield Label(Text("Prompt: " + one_line(strip_control(self.prompt), 200)),
                        classes="diff-title")
            yield Label(Text(self.label), classes="field-label")
            yield Static(Text(strip_control(self.accepted)), classes="diff-text")
            if self.chosen is not None:
                yield Label("Chosen answer (in the dataset)", classes="field-label")
                yield Static(Text(strip_control(self.chosen)), classes="diff-text")
            yield Label(Text(f"{current_label} (answering now)"), classes="field-label")
            yield Static(old_text, classes="diff-text")
            yield Label(Text(f"{new_label} (new)"), classes="field-label")
            yield Static(new_text, classes="diff-text")
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)


class ReviewScreen(ModalScreen[str | None]):
    """Dismisses with "accept", "reject", or None (decide later)."""

    CSS_PATH = "review.tcss"
    BINDINGS = [
        Binding("a", "decide('accept')", "Accept (swap now)"),
        Binding("r", "decide('reject')", "Reject (keep current)"),
        Binding("escape", "decide(None)", "Decide later"),
    ]

    def __init__(self, comparison: Comparison) -> None:
        super().__init__()
        self.comparison = comparison
        # When the last key reached this screen (opening counts: the user may be mid-word).
        self._last_key = time.monotonic()
        self._after_pause = False

    def compose(self) -> ComposeResult:
        result = self.comparison
        new, old = result.candidate, result.current
        with Vertical(id="review-box"):
            yield Label(Text(f"Review adapter {new.label} before it answers"),
                        id="review-title")
            lines = [f"Curated answers reproduced: {new.curated}/{new.examples} "
                     f"(answering now, {old.label}: {old.curated}/{old.examples})"]
            if result.pins:
                lines.append(f"Pinned answers kept: {new.pins_kept}/{len(result.pins)} "
                             f"({old.label}: {old.pins_kept}/{len(result.pins)})")
            else:
                lines.append("No pinned prompts yet: /pin a turn that must keep working.")
            if result.rejected:
                lines.append("Bad answers avoided: "
                             + result.avoided_figures(f"answering now, {old.label}"))
            if new.preferences:
                lines.append("Its training run: " + preference_summary(new.preferences))
            drift = (new.drift or {}).get("perplexity_ratio")
            if drift is not None:
                lines.append(f"Drift on held-out prompts: perplexity ×{drift:.2f}")
            if result.regression:
                reasons = [reason for reason, found in (
                    ("fewer curated answers", new.curated < old.curated),
                    ("a pinned answer changed", result.broken_pins),
                    ("a bad answer came back", result.newly_given)) if found]
                lines.append("⚠ Regression: " + "; ".join(reasons))
            yield Static(Text("\n".join(lines)), id="review-summary")
            table = DataTable(id="review-pins", cursor_type="row", zebra_stripes=True)
            yield table
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#review-pins", DataTable)
        result = self.comparison
        table.add_columns("", "prompt" if result.rejected else "pinned prompt",
                          result.current.label, result.candidate.label)
        styles = {"kept": "green", "same": "yellow", "changed": "bold red",
                  "avoided": "green", "given": "bold red"}
        for index, pin in enumerate(result.pins):
            new_answer = result.candidate.pin_answers[index]
            status = result.pin_status(index)
            table.add_row(
                Text(status, style=styles[status]),
                Text(one_line(strip_control(pin.instruction), CELL_WIDTH)),
                Text(one_line(strip_control(result.current.pin_answers[index]), CELL_WIDTH)),
                Text(one_line(strip_control(new_answer), CELL_WIDTH)),
                key=str(index))
        for index, (bad, _) in enumerate(result.rejected):
            status = result.bad_answer_status(index)
            table.add_row(
                Text(status, style=styles[status]),
                Text(one_line(strip_control(bad.instruction), CELL_WIDTH)),
                Text(one_line(strip_control(result.current.bad_answers[index]), CELL_WIDTH)),
                Text(one_line(strip_control(result.candidate.bad_answers[index]), CELL_WIDTH)),
                key=f"bad-{index}")
        table.display = bool(result.pins or result.rejected)
        if table.display:
            table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        result = self.comparison
        if key.startswith("bad-"):
            index = int(key.removeprefix("bad-"))
            bad, chosen = result.rejected[index]
            self.app.push_screen(AnswerDiffScreen(
                bad.instruction, bad.response,
                (result.current.label, result.current.bad_answers[index]),
                (result.candidate.label, result.candidate.bad_answers[index]),
                label="Bad answer (rejected)", chosen=chosen))
            return
        index = int(key)
        pin = result.pins[index]
        self.app.push_screen(AnswerDiffScreen(
            pin.instruction, pin.response,
            (result.current.label, result.current.pin_answers[index]),
            (result.candidate.label, result.candidate.pin_answers[index])))

    def on_key(self, event) -> None:
        # Runs before the key's binding: whether this key came after a pause.
        now = time.monotonic()
        self._after_pause = now - self._last_key >= DECISION_PAUSE_S
        self._last_key = now

    def action_decide(self, decision: str | None) -> None:
        # The review opens by itself when a run ends, maybe while the user is typing in
        # the chat: the "a" or "r" of a word must not decide. A decision needs a pause first.
        if decision is not None and not self._after_pause:
            self.notify("Still typing? The review takes a or r pressed after a pause: press "
                        "it again.", markup=False)
            return
        self.dismiss(decision)
