"""The training panel: step/total, epoch, loss sparkline, tokens per second and ETA."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, Sparkline

from sftchat.training.events import placement, rejected_part, step_line


class TrainingPanel(Vertical):
    """Hidden until a run starts; shows the run's live progress."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.losses: list[float] = []

    def compose(self):
        yield Label("", id="training-title")
        with Horizontal(id="training-row"):
            yield ProgressBar(total=None, show_eta=False, id="training-progress")
            yield Sparkline([], id="training-loss")
        yield Label("", id="training-stats")

    def started(self, event: dict) -> None:
        self.losses = []
        self.query_one("#training-title", Label).update(Text(
            f"Training {event['name']} on {event['examples']} examples"
            f"{rejected_part(event)} ({placement(event)}) — /cancel or ctrl+b to stop"))
        self.query_one(ProgressBar).update(total=event["total_steps"], progress=0)
        self.query_one(Sparkline).data = []
        self.query_one("#training-stats", Label).update("starting…")
        self.display = True

    def stepped(self, event: dict) -> None:
        self.losses.append(event["loss"])
        self.query_one(ProgressBar).update(total=event["total_steps"], progress=event["step"])
        self.query_one(Sparkline).data = self.losses[-120:]
        self.query_one("#training-stats", Label).update(Text(step_line(event)))

    def ended(self) -> None:
        self.display = False
