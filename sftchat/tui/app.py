"""The sftchat Textual app: built by `create_app(settings)`, thin on purpose.

The app owns what outlives a screen — the engine (loaded in the background by the chat
screen), the dataset store, the trainer subprocess and the export subprocess — and the
app-wide commands (palette entries, quitting). Everything the user sees lives in `screens/`
and `widgets/`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from functools import partial
from typing import Callable

from textual.app import App
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider

from sftchat.config import Settings
from sftchat.dataset.store import ExampleStore
from sftchat.training.events import TERMINAL_EVENTS
from sftchat.tui.export_process import ExportProcess, ExportRequest, occupied
from sftchat.tui.trainer_process import (
    TrainerProcess, trainer_command, trainer_global_args)
from sftchat.tui.messages import (
    ExportEnded, ExportProgressed, TrainingEnded, TrainingProgressed,
)
from sftchat.tui.screens.chat import ChatScreen
from sftchat.tui.screens.confirm import ConfirmModal
from sftchat.tui.screens.export import ExportScreen

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
    ("Export an adapter (GGUF, Ollama, merged)", "export", "e on F3 · /export NAME FORMAT"),
    ("Stop the export", "cancel_export", "/export cancel"),
    ("Copy the last export's run command", "copy_export", "/export copy"),
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
        self.exporter: ExportProcess | None = None
        self.last_export: dict | None = None   # the last `finished` export event

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
        if self.exporter is not None:
            # Quitting stops an export: it publishes nothing, and its staging folder goes.
            exporter = self.exporter
            await exporter.stop(timeout=15)
            exporter.remove_staging()
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
        command = trainer_command(self.settings.workspace,
                                  trainer_global_args(self.settings), train_args)
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

    # ------------------------------------------------------------------ export

    @property
    def exporting(self) -> bool:
        return self.exporter is not None and not self.exporter.ended

    def request_export(self, request: ExportRequest,
                       then: Callable[[str], None] = lambda outcome: None) -> None:
        """Start `request`, after a yes when its folder exists and is not empty (it is then
        replaced: `--force`). `then` gets "started", "declined" or "refused" (the app said
        why)."""
        if request.force or not occupied(request.folder):
            then("started" if self.start_export(request) else "refused")
            return

        def answered(replace: bool | None) -> None:
            if not replace:
                then("declined")
            else:
                forced = dataclasses.replace(request, force=True)
                then("started" if self.start_export(forced) else "refused")

        self.push_screen(ConfirmModal(f"{request.folder} exists and is not empty. Replace "
                                      "it with this export?", yes="Replace", no="Keep it"),
                         answered)

    def start_export(self, request: ExportRequest) -> bool:
        if self.exporting:
            running = self.exporter.request
            self.notify(f"An export is running already ({running.adapter} to "
                        f"{running.folder}); /export cancel stops it.", markup=False)
            return False
        self.exporter = ExportProcess(self.settings.workspace, request, self._on_export_event,
                                      self.settings.trusted_model)
        self.screen_for_events().status.export = "starting…"
        self.run_worker(self._run_export(self.exporter), group="export", exit_on_error=False)
        return True

    async def _run_export(self, exporter: ExportProcess) -> None:
        quitting = False
        try:
            await exporter.run()
        except asyncio.CancelledError:
            # The app is quitting: the run stays here for `on_unmount` to wait for and to
            # clean up after (its child may still be writing).
            quitting = True
            raise
        finally:
            if self.exporter is exporter and not quitting:
                self.exporter = None

    def _on_export_event(self, event: dict) -> None:
        """The chat screen (status line, the one notification at the end) and an open
        export dialog each get the event as a message."""
        if event["event"] == "finished":
            self.last_export = event
        screens = [self.screen_for_events(),
                   *(screen for screen in self.screen_stack if isinstance(screen, ExportScreen))]
        for screen in screens:
            screen.post_message(ExportProgressed(str(event.get("message", "")))
                                if event["event"] == "progress" else ExportEnded(event))

    def cancel_export(self) -> bool:
        if not self.exporting:
            return False
        self.exporter.cancel()
        self.notify("Stopping the export…", markup=False)
        return True

    def copy_export_command(self, event: dict | None = None) -> None:
        """Put the command that runs the (last) export on the clipboard."""
        event = event or self.last_export
        if event is None or not event.get("next_step"):
            self.notify("No export has finished yet.", markup=False)
            return
        self.copy_to_clipboard(str(event["next_step"]))
        self.notify(f"Copied: {event['next_step']}", markup=False)

    # ------------------------------------------------------------------ quit

    def _stop_answer(self) -> None:
        """Cancel what the engine is doing — the answer, a review's replay, a compare:
        Textual joins thread workers at exit, and each waits for its engine job, so work
        left running would keep the process busy after the window closed."""
        if self.engine is not None:
            self.engine.cancel_all()

    async def action_quit(self) -> None:
        if not self.training and not self.exporting:
            self._stop_answer()
            self.exit()
            return

        def answered(stop: bool | None) -> None:
            if stop:
                if self.trainer is not None:  # it may have ended while the question was open
                    self.trainer.cancel()
                if self.exporter is not None:
                    self.exporter.cancel()
                self._stop_answer()
                self.exit()

        question = {(True, False): "Training is running. Stop it and quit?",
                    (False, True): "An export is running. Stop it and quit?",
                    (True, True): "Training and an export are running. Stop both and quit?"}
        self.push_screen(ConfirmModal(question[self.training, self.exporting],
                                      yes="Stop and quit", no="Keep going"), answered)


def create_app(settings: Settings, engine_factory: EngineFactory | None = None) -> SftchatApp:
    """Build the app for `settings`; `engine_factory(settings)` loads the engine (in a
    worker thread); by default the real `ChatEngine`."""
    return SftchatApp(settings, engine_factory)
