"""The chat screen's model side: training runs, the review of their adapters, swaps and
rollback. A mixin of `ChatScreen` (kept apart so each file holds one job).

When a run finishes, its adapter does not answer blindly: a worker replays it against the
model answering now (`sftchat.adapters.comparison.compare`, a background job on the engine
thread: curated examples, pinned prompts) and the review opens (`ReviewScreen`); accept swaps
it in, reject keeps the current one; either decision is recorded beside the adapter
(`lineage.record_decision`). `review = false` in sftchat.toml, or `/train --auto-swap`, swaps
at once. Swaps wait for an answer in progress and keep the conversation's context;
`/adapter previous` (and `p` on the adapters screen) goes back to the adapter that answered
before.
"""

from __future__ import annotations

import shlex
import time

from textual import work

from sftchat.adapters import registry as adapter_registry
from sftchat.adapters.registry import AdapterError
from sftchat.dataset.pins import Pins
from sftchat.dataset.store import ExampleStore
from sftchat.adapters.lineage import record_decision
from sftchat.adapters.comparison import compare, pair_rejected
from sftchat.training.events import outcome_summary, truncation_notice
from sftchat.training.options import TrainOptionsError, parse_train_options
from sftchat.tui.messages import (
    AdapterSwapped, ResumeOffered, ReviewProgressed, ReviewReady, TrainingEnded,
    TrainingProgressed,
)
from sftchat.tui.widgets.training_panel import TrainingPanel

AUTO_SWAP_FLAG = "--auto-swap"
# The review's progress in the status line, at most this often.
PROGRESS_EVERY_S = 0.25


class ModelsMixin:
    """Training, review, swap and rollback for `ChatScreen` (which provides `status`,
    `log_view`, `generating`, `pending_swap` and `turns`). A swap keeps the conversation:
    the next answer comes from the new adapter, after the same turns."""

    # Adapters that answered before the active one, oldest first (None: the base model).
    answered_before: list[str | None]
    auto_swap_run: bool = False
    pending_review = None  # a Comparison waiting for the chat to be in front

    # ------------------------------------------------------------------ training

    def action_train(self) -> None:
        self.auto_swap_run = False
        self.app.start_training()

    def train_with_options(self, text: str) -> None:
        """`/train --epochs 3 --name v2`: the command line's train options, checked here;
        `--auto-swap` (the app's own) skips the review for this run."""
        try:
            words = shlex.split(text)
        except ValueError:
            words = None  # unbalanced quotes: the option parser says so
        auto_swap = words is not None and AUTO_SWAP_FLAG in words
        if auto_swap:
            text = shlex.join(word for word in words if word != AUTO_SWAP_FLAG)
        try:
            options = parse_train_options(text)
        except TrainOptionsError as exc:
            self.notify(str(exc), title="/train", severity="error", markup=False, timeout=15)
            return
        if self.app.start_training(tuple(options)):
            self.auto_swap_run = auto_swap

    def action_cancel_training(self) -> None:
        if not self.app.cancel_training():
            self.notify("No training is running.", markup=False)

    def on_training_progressed(self, message: TrainingProgressed) -> None:
        event = message.event
        panel = self.query_one(TrainingPanel)
        if event["event"] == "started":
            panel.started(event)
            self.status.training = f"step 0/{event['total_steps']}"
            notice = truncation_notice(event)
            if notice:
                self.log_view.add_notice(f"Training: {notice}")
            self.prepare_swap_slot(event.get("lora"))
        elif event["event"] == "step":
            panel.stepped(event)
            self.status.training = f"step {event['step']}/{event['total_steps']}"

    def on_training_ended(self, message: TrainingEnded) -> None:
        event = message.event
        self.query_one(TrainingPanel).ended()
        self.status.training = "idle"
        if event["event"] == "finished":
            summary = outcome_summary(event.get("replay"), event.get("drift"),
                                      event.get("preferences"))
            if summary:
                self.log_view.add_notice(f"Adapter {event['name']}: {summary}.")
            if self.app.settings.review and not self.auto_swap_run \
                    and self.app.engine is not None:
                self.notify(f"Training finished: adapter {event['name']}. Replaying it "
                            "against the model answering now for your review…",
                            markup=False, timeout=12)
                self.status.training = "reviewing…"
                self.review_adapter(event["name"])
                return
            self.notify(f"Training finished: adapter {event['name']} "
                        f"(final loss {event['final_loss']:.4f}). " + summary.capitalize()
                        + ("." if summary else ""), markup=False, timeout=12)
            self.swap_when_idle(event["name"])
        elif event["event"] == "cancelled":
            message = event.get("message") or "training cancelled; nothing was published"
            self.notify(message[0].upper() + message[1:].rstrip(".") + ".", markup=False)
            self.offer_resume()
        else:
            what = "Training failed" if event.get("started", True) else "Training did not start"
            self.log_view.add_notice(f"{what}: {event.get('message', '')}")
            self.notify(event.get("message", "training failed"), title=what,
                        severity="error", markup=False, timeout=15)
            self.offer_resume()

    @work(thread=True, exclusive=True, exit_on_error=False, group="resume")
    def offer_resume(self) -> None:
        """Say so when the workspace holds an interrupted run (at startup, after a cancel, a
        crash or a kill): `/train --resume` continues it (`training.checkpoint`)."""
        from sftchat.training.checkpoint import interrupted_run

        try:
            run = interrupted_run(self.app.settings.adapters_dir)
        except OSError:
            return   # only an offer: the adapters folder unreadable is said elsewhere
        if run is not None:
            self.post_message(ResumeOffered(f"Interrupted: {run.describe()}. "
                                            "/train --resume continues it."))

    def on_resume_offered(self, message: ResumeOffered) -> None:
        self.log_view.add_notice(message.text)

    # ------------------------------------------------------------------ review

    @work(thread=True, exclusive=True, exit_on_error=False, group="review")
    def review_adapter(self, name: str) -> None:
        """Replay `name` against the model answering now: a background job on the engine
        thread, in batches, so an answer asked meanwhile goes first; the status line shows
        how far it is."""
        settings = self.app.settings
        with ExampleStore(settings.data_dir) as store, store.transaction(read_only=True):
            examples, pins = store.snapshot(), Pins(store).all()
            rejected = pair_rejected(examples, list(store.iter_rejected()))
        engine = self.app.engine
        shown = [0.0]

        def progress(model: str | None, done: int, total: int) -> None:
            now = time.monotonic()
            if now - shown[0] >= PROGRESS_EVERY_S or done == total:
                shown[0] = now
                self.post_message(ReviewProgressed(
                    f"reviewing {name}: {model or 'base model'} {done}/{total}"))

        comparison = compare(engine, engine.active_adapter, name, examples, pins,
                             max_length=settings.training.max_length,
                             seed=settings.training.seed, progress=progress,
                             rejected=rejected)
        self.post_message(ReviewReady(comparison))

    def on_review_progressed(self, message: ReviewProgressed) -> None:
        self.status.training = message.text

    def on_review_ready(self, message: ReviewReady) -> None:
        self.status.training = "idle"
        self.pending_review = message.comparison
        if self.app.screen is self:
            self.open_pending_review()
        else:
            # Not over another screen or question: it opens when the chat is back in front.
            self.notify(f"Adapter {message.comparison.candidate.label} is ready for review; "
                        "it opens when you are back in the chat.", markup=False)

    def open_pending_review(self) -> None:
        from sftchat.tui.screens.review import ReviewScreen

        comparison, self.pending_review = self.pending_review, None
        if comparison is not None:
            self.app.push_screen(ReviewScreen(comparison),
                                 lambda decision: self._reviewed(comparison, decision))

    def _review_failed(self, error: str) -> None:
        self.status.training = "idle"
        self.notify(f"{error}. The new adapter was not swapped in: /adapter latest uses it.",
                    title="Review failed", severity="error", markup=False, timeout=15)

    def _reviewed(self, comparison, decision: str | None) -> None:
        name = comparison.candidate.name
        if decision is None:
            self.notify(f"Adapter {name} waits for your decision: /adapter {name} uses it; "
                        "F3 lists the adapters.", markup=False)
            return
        try:
            info = adapter_registry.resolve(self.app.settings.adapters_dir, name)
            record_decision(info, "accepted" if decision == "accept" else "rejected",
                       comparison.verdict())
        except (OSError, AdapterError) as exc:
            # Deleted (`adapters rm`) while the review was open, or a read-only folder.
            self.notify(f"could not record the review: {exc}", severity="warning",
                        markup=False)
            if isinstance(exc, AdapterError):
                return
        if decision == "accept":
            self.swap_when_idle(name)
        else:
            # Its weights leave memory now; it reloads from disk if ever used again.
            self.unload_rejected(name)
            self.log_view.add_notice(f"Adapter {name} rejected; "
                                     f"{comparison.current.label} keeps answering.")
            self.notify(f"Rejected {name}: it stays on disk, marked rejected "
                        f"(`sftchat adapters rm {name}` deletes it).", markup=False)

    # ------------------------------------------------------------------ adapters

    @work(thread=True, exit_on_error=False, group="swap")
    def unload_rejected(self, name: str) -> None:
        # In a worker: it waits for the engine thread (a step of an answer at most).
        self.app.engine.unload_adapter(name)

    @work(thread=True, exclusive=True, exit_on_error=False, group="slot")
    def prepare_swap_slot(self, lora: dict | None) -> None:
        """While the trainer runs, inject the empty LoRA layers its adapter will fill (the
        shape its `started` event announced), so the swap at the end only copies weights
        (it waits for an answer in progress)."""
        engine = self.app.engine
        if engine is not None and lora and lora.get("rank") and lora.get("alpha"):
            try:
                engine.prepare_slot(lora["rank"], lora["alpha"], lora.get("dropout") or 0.0)
            except Exception:  # noqa: BLE001 - only an optimisation: the swap loads normally
                pass

    def swap_when_idle(self, name: str) -> None:
        """Swap `name` in now, or once the answer in progress is complete."""
        if self.generating:
            self.pending_swap = name
        else:
            self.swap_adapter(name, automatic=True)

    def swap_adapter(self, name: str | None, automatic: bool = False) -> None:
        if self.app.engine is None:
            self.notify("no model is loaded" if self.model_error else
                        "the model is still loading", title="Adapter", severity="error",
                        markup=False, timeout=15)
            return
        if name == "previous":
            if not self.answered_before:
                self.notify("No adapter answered before this one in this session.",
                            markup=False)
                return
            name = self.answered_before[-1] or "none"
        self._swap(self.app.engine, name, automatic)

    @work(thread=True, exclusive=True, exit_on_error=False, group="swap")
    def _swap(self, engine, name: str | None, automatic: bool) -> None:
        before = engine.active_adapter
        result = engine.use_adapter(name)
        self.post_message(AdapterSwapped(result.name, result.seconds, automatic, before))

    def on_adapter_swapped(self, message: AdapterSwapped) -> None:
        if message.name != message.before:
            # Going back pops the history; anything else pushes what answered until now.
            if self.answered_before and self.answered_before[-1] == message.name:
                self.answered_before.pop()
            else:
                self.answered_before.append(message.before)
        self.status.adapter = message.name
        who = f"adapter {message.name}" if message.name else "the base model"
        if self.turns:
            # The conversation goes on: adapters train on conversations, so the new one
            # answers after the same turns, as it would in the data it learned from.
            self.log_view.add_notice(f"── now answering: {who} · same conversation ──")
        how = "Swapped in" if message.automatic else "Switched to"
        self.notify(f"{how} {who} ({message.seconds * 1000:.0f} ms); "
                    "the next answer comes from it.", markup=False)

    def action_adapters(self) -> None:
        from sftchat.tui.screens.adapters import AdaptersScreen

        engine = self.app.engine
        active = engine.active_adapter if engine else None
        self.app.push_screen(AdaptersScreen(self.app.settings.adapters_dir, active),
                             self._adapter_chosen)

    def _adapter_chosen(self, name: str | None) -> None:
        if name is not None:
            self.swap_adapter(name)
