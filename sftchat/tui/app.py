"""The sftchat Textual app: built by `create_app(settings)`, thin on purpose.

The app owns what outlives a screen — the engine (loaded in the background by the chat
screen), the dataset store and the trainer subprocess — and the app-wide commands (palette
entries, quitting). Everything the user sees lives in `screens/` and `widgets/`.
"""

from __future__ import annotations

import gc

from functools import partial
from typing import Callable

from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

from sftchat.config import Settings
from sftchat.dataset.store import ExampleStore
from sftchat.training.events import TERMINAL_EVENTS
from sftchat.tui.trainer_process import TrainerProcess, trainer_command
from sftchat.tui.messages import TrainingEnded, TrainingProgressed
from sftchat.tui.screens.chat import ChatScreen
from sftchat.tui.screens.confirm import ConfirmModal

EngineFactory = Callable[[Settings], object]

PALETTE = [
    ("Save last answer to dataset", "save", "ctrl+s · /save"),
    ("Train an adapter", "train", "ctrl+t · /train"),
    ("Stop training", "cancel_training", "ctrl+b · /cancel"),
    ("Regenerate last answer", "retry", "ctrl+r · /retry"),
    ("New conversation", "new_chat", "ctrl+n · /new"),
    ("Browse dataset", "dataset", "F2 · /data"),
    ("Adapters", "adapters", "F3 · /adapters"),
    ("Answer with the base model (no adapter)", "base_model", "/adapter none"),
    ("Roll back to the adapter that answered before", "previous_adapter", "/adapter previous"),
    ("Pin the last answer (it must keep working)", "pin", "ctrl+k · /pin"),
    ("Keep the last answer as a bad one", "bad_answer", "ctrl+x · /bad"),
    ("Compare the last answer across models", "compare", "ctrl+y · /compare"),
    ("Set the system prompt", "system_prompt", "/system TEXT · /system none"),
    ("Sampling: temperature, top_p, max_new_tokens", "sampling", "/set KEY VALUE"),
    ("Help", "help", "F1 · /help"),
]


class SftchatCommands(Provider):
    """Command-palette entries for the chat screen's actions."""

    async def discover(self) -> Hits:
        for title, action, help_text in PALETTE:
            yield DiscoveryHit(title, partial(self._run, action), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, action, help_text in PALETTE:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), partial(self._run, action),
                          help=help_text)

    def _run(self, action: str) -> None:
        screen = self.app.get_screen("chat") if self.app.is_screen_installed("chat") else None
        if screen is None:
            return
        if action in ("base_model", "previous_adapter"):
            screen.swap_adapter("none" if action == "base_model" else "previous")
        else:
            getattr(screen, f"action_{action}")()


class SftchatApp(App):
    TITLE = "sftchat"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {SftchatCommands}
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, settings: Settings, engine_factory: EngineFactory | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.engine_factory = engine_factory
        self.engine = None
        self.store = ExampleStore(settings.data_dir)
        self.trainer: TrainerProcess | None = None

    def on_mount(self) -> None:
        self.install_screen(ChatScreen(), "chat")
        self.push_screen("chat")

    async def on_unmount(self) -> None:
        # The chat froze the model's objects out of the collector (`gc.freeze`): give them
        # back, so that an app run in a longer process (tests, benchmarks) can be freed.
        gc.unfreeze()
        self._stop_answer()
        if self.trainer is not None:
            # Quitting stops the trainer: it cleans up and publishes nothing.
            await self.trainer.stop(timeout=15)
        self.store.close()

    # ------------------------------------------------------------------ engine

    def load_engine(self):
        """Load the model and return the engine (called from a worker thread: it takes
        seconds); the chat screen sets `self.engine` when its `ModelLoaded` arrives."""
        if self.engine_factory is None:
            from sftchat.engine import ChatEngine

            self.engine_factory = ChatEngine.from_settings
        return self.engine_factory(self.settings)

    # ------------------------------------------------------------------ training

    @property
    def training(self) -> bool:
        return self.trainer is not None and self.trainer.running

    def start_training(self, train_args: tuple[str, ...] = ()) -> bool:
        if self.trainer is not None:
            self.notify("Training is already running.", markup=False)
            return False
        if self.store.count() == 0:
            self.notify("The dataset is empty: save an answer with ctrl+s first.",
                        severity="warning", markup=False)
            return False
        global_args = ["--model", self.settings.model, "--device", self.settings.device,
                       "--template", self.settings.template]
        if not self.settings.quantize:
            global_args.append("--no-quantize")
        command = trainer_command(self.settings.workspace, global_args, train_args)
        self.trainer = TrainerProcess(command, self._on_trainer_event)
        self.screen_for_events().status.training = "starting…"
        self.run_worker(self._run_trainer(self.trainer), group="train", exit_on_error=False)
        return True

    async def _run_trainer(self, trainer: TrainerProcess) -> None:
        try:
            await trainer.run()
        finally:
            if self.trainer is trainer:
                self.trainer = None

    def _on_trainer_event(self, event: dict) -> None:
        screen = self.screen_for_events()
        if event["event"] in TERMINAL_EVENTS:
            screen.post_message(TrainingEnded(event))
        else:
            screen.post_message(TrainingProgressed(event))

    def screen_for_events(self) -> ChatScreen:
        return self.get_screen("chat")

    def cancel_training(self) -> bool:
        if self.trainer is None or not self.trainer.running:
            return False
        self.trainer.cancel()
        self.notify("Stopping training…", markup=False)
        return True

    # ------------------------------------------------------------------ quit

    def _stop_answer(self) -> None:
        """Cancel what the engine is doing — the answer, a review's replay, a compare:
        Textual joins thread workers at exit, and each waits for its engine job, so work
        left running would keep the process busy after the window closed."""
        if self.engine is not None:
            self.engine.cancel_all()

    async def action_quit(self) -> None:
        if not self.training:
            self._stop_answer()
            self.exit()
            return

        def answered(stop: bool | None) -> None:
            if stop:
                if self.trainer is not None:  # it may have ended while the question was open
                    self.trainer.cancel()
                self._stop_answer()
                self.exit()

        self.push_screen(ConfirmModal("Training is running. Stop it and quit?",
                                      yes="Stop and quit", no="Keep going"), answered)


def create_app(settings: Settings, engine_factory: EngineFactory | None = None) -> SftchatApp:
    """Build the app for `settings`; `engine_factory(settings)` loads the engine (in a
    worker thread); by default the real `ChatEngine`."""
    return SftchatApp(settings, engine_factory)
