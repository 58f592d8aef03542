"""The chat screen: conversation, prompt, status line and training panel.

Nothing that can wait runs on the event loop: the model loads, answers are generated,
adapters swap and curated answers are saved in thread workers that only post past-tense
messages (`tui.messages`); a worker that fails raises, and `on_worker_state_changed` turns
that into one message for the user. Saving opens its own SQLite connection, so a CLI import
holding the write lock delays the save, never the interface (reads in WAL mode do not wait
for a writer). Training runs in a subprocess (`TrainerProcess`) whose events arrive as
messages. The engine lock guarantees an adapter swap never lands in the middle of an answer;
the screen also defers an automatic swap until the answer completes.
"""

from __future__ import annotations

import threading

from textual import on, work
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from sftchat.dataset.store import ExampleStore
from sftchat.errors import SftchatError
from sftchat.prompts import Turn
from sftchat.training.memory import gpu_memory_text
from sftchat.tui.messages import (
    ExampleSaved, ModelLoaded, ResponseChunkReceived, ResponseCompleted, StoreWritten,
)
from sftchat.tui.screens.chat_models import ModelsMixin
from sftchat.tui.screens.curate import CurateModal, CurateResult
from sftchat.tui.screens.dataset import OUTSIDE_CHANGES_POLL_S
from sftchat.tui.widgets.chat_log import ChatLog
from sftchat.tui.widgets.prompt_input import PromptInput
from sftchat.tui.widgets.status_line import StatusLine
from sftchat.tui.widgets.training_panel import TrainingPanel

# A save still waiting after this long says why (another process holds the dataset's lock).
SLOW_SAVE_NOTICE_S = 1.0
# How often the status line reads the GPU's memory (a driver query, microseconds).
GPU_MEMORY_POLL_S = 2.0


def error_line(exc: BaseException) -> str:
    """One line for the user: our own errors are written for them; others get their type."""
    if isinstance(exc, SftchatError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class ChatScreen(ModelsMixin, Screen):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save answer", priority=True),
        Binding("ctrl+t", "train", "Train", priority=True),
        Binding("ctrl+b", "cancel_training", "Stop training", priority=True),
        Binding("escape", "stop", "Stop answer"),
        Binding("ctrl+r", "retry", "Retry", priority=True),
        Binding("ctrl+n", "new_chat", "New chat", priority=True),
        # Not in the footer (it would push Save and Train out of a narrow one): F1 and the
        # command palette list them.
        Binding("ctrl+k", "pin", "Pin", priority=True, show=False),
        Binding("ctrl+x", "bad_answer", "Bad answer", priority=True, show=False),
        Binding("ctrl+y", "compare", "Compare", priority=True, show=False),
        Binding("f2", "dataset", "Dataset"),
        Binding("f3", "adapters", "Adapters"),
        Binding("f1", "help", "Help"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.turns: list[Turn] = []
        self.last_exchange: Turn | None = None  # the last finished turn: what ctrl+s curates
        self.pending: list[str] = []          # prompts typed before the model was ready
        self.model_error: str | None = None   # why the model could not be loaded, if so
        self.pending_swap: str | None = None  # adapter to swap in once the answer completes
        self._turn_counter = 0
        self._active_turn: tuple[int, str] | None = None
        # A turn whose conversation was left (ctrl+n) mid-answer: its late result is dropped.
        self._abandoned_turn: int | None = None
        self._cancel = threading.Event()
        self.saves_in_flight = 0
        self.answered_before: list[str | None] = []

    # ------------------------------------------------------------------ layout

    def compose(self):
        yield StatusLine(id="status")
        yield ChatLog(id="chat-log")
        panel = TrainingPanel(id="training-panel")
        panel.display = False
        yield panel
        yield PromptInput(id="prompt", placeholder="Ask something — Enter sends, "
                                                   "/help lists commands")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(PromptInput).focus()
        self.refresh_dataset_size()
        # Another app or a CLI may curate into the same workspace: keep the count true.
        self._outside_changes = self.app.store.outside_changes()
        self.set_interval(OUTSIDE_CHANGES_POLL_S, self._notice_outside_changes)
        # Start loading after the first paint: importing torch in a worker thread holds the
        # GIL for long stretches and would otherwise delay it.
        self.call_after_refresh(self.load_model)

    def on_screen_resume(self) -> None:
        self.refresh_dataset_size()
        if self.pending_review is not None:
            self.call_after_refresh(self.open_pending_review)

    @property
    def status(self) -> StatusLine:
        return self.query_one(StatusLine)

    @property
    def log_view(self) -> ChatLog:
        return self.query_one(ChatLog)

    @property
    def generating(self) -> bool:
        return self._active_turn is not None

    def refresh_dataset_size(self) -> None:
        self.status.examples = self.app.store.count()

    def _notice_outside_changes(self) -> None:
        version = self.app.store.outside_changes()
        if version != self._outside_changes:
            self._outside_changes = version
            self.refresh_dataset_size()

    # ------------------------------------------------------------------ model

    @work(thread=True, exclusive=True, exit_on_error=False, group="load")
    def load_model(self) -> None:
        self.post_message(ModelLoaded(self.app.load_engine()))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.app.engine = message.engine
        self.status.model = message.engine.loaded.describe()
        if message.engine.loaded.device == "cuda":
            # The chat and the trainer share the GPU: its memory stays in view.
            self._show_gpu_memory()
            self.set_interval(GPU_MEMORY_POLL_S, self._show_gpu_memory)
        pending, self.pending = self.pending, []
        if pending:
            self.start_answer("\n\n".join(pending), show_user=False)

    def _show_gpu_memory(self) -> None:
        import torch  # loaded already: the engine runs on it

        free, total = torch.cuda.mem_get_info(self.app.engine.loaded.model.device)
        self.status.gpu_memory = gpu_memory_text(free, total)

    def _model_load_failed(self, error: str) -> None:
        self.model_error = error
        self.status.model = "model failed to load"
        self.log_view.add_notice(f"Could not load the model: {error}")
        if self.pending:
            self.pending = []
            self.log_view.add_notice("The messages typed while it loaded cannot be answered.")
        self.notify(error, title="Model", severity="error", markup=False, timeout=15)

    # ------------------------------------------------------------------ failed workers

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place a failed worker becomes a message: workers raise, never report."""
        if event.state is not WorkerState.ERROR:
            return
        failed = {
            "load": self._model_load_failed,
            "generate": self._answer_failed,
            "swap": lambda error: self.notify(error, title="Adapter", severity="error",
                                              markup=False, timeout=15),
            "save": self._save_failed,
            "review": self._review_failed,
            "store": lambda error: self.notify(error, title="Not saved", severity="error",
                                               markup=False, timeout=15),
        }.get(event.worker.group)
        if failed is not None:
            failed(error_line(event.worker.error))

    # ------------------------------------------------------------------ chat

    @on(PromptInput.Submitted)
    def on_prompt_submitted(self, message: PromptInput.Submitted) -> None:
        text = message.text.strip()
        if text.startswith("/"):
            self.run_slash_command(text)
            return
        if self.model_error is not None:
            # Kept in the input: nothing typed is lost while the user reads why.
            self.query_one(PromptInput).text = message.text
            self.notify(f"No model to answer: {self.model_error}. The dataset (F2) and "
                        "adapters (F3) still work; restart with a model that loads.",
                        severity="error", markup=False, timeout=15)
            return
        if self.app.engine is None:
            self.log_view.add_user(text)
            self.pending.append(text)
            self.notify("The model is still loading; your message is queued.", markup=False)
            return
        if self.generating:
            self.notify("Still answering — press Esc to stop it first.", markup=False)
            self.query_one(PromptInput).text = message.text
            return
        self.start_answer(text)

    def start_answer(self, question: str, show_user: bool = True) -> None:
        if show_user:
            self.log_view.add_user(question)
        self._turn_counter += 1
        turn_id = self._turn_counter
        self._active_turn = (turn_id, question)
        self._cancel = threading.Event()
        self.log_view.add_assistant(turn_id)
        self.status.generating = True
        self.generate(turn_id, question, list(self.turns), self._cancel)

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate")
    def generate(self, turn_id: int, question: str, history: list[Turn],
                 cancel: threading.Event) -> None:
        generation = self.app.engine.generate(question, history=history, cancel=cancel)
        for piece in generation:
            self.post_message(ResponseChunkReceived(turn_id, piece))
        self.post_message(ResponseCompleted(
            turn_id, generation.text, generation.finish_reason, generation.adapter,
            generation.new_tokens, generation.seconds, generation.notice))

    def _answer_widget(self, turn_id: int):
        answer = self.log_view.last_assistant()
        return answer if answer is not None and answer.turn_id == turn_id else None

    async def on_response_chunk_received(self, message: ResponseChunkReceived) -> None:
        answer = self._answer_widget(message.turn_id)
        if answer is not None:
            await answer.append(message.text)
            self.log_view.scroll_end(animate=False)

    async def on_response_completed(self, message: ResponseCompleted) -> None:
        answer = self._answer_widget(message.turn_id)
        who = message.adapter or "base model"
        meta = f"{who} · {message.tokens} tokens · {message.seconds:.1f} s"
        if message.finish_reason == "cancelled":
            meta += " · stopped"
        elif message.finish_reason == "length":
            meta += " · hit max tokens"
        if answer is not None:
            await answer.finish(message.text, meta)
        if message.notice:
            self.log_view.add_notice(message.notice)
        if self._active_turn and self._active_turn[0] == message.turn_id \
                and message.turn_id != self._abandoned_turn:
            question = self._active_turn[1]
            self.turns.append(Turn(question, message.text))
            self.last_exchange = Turn(question, message.text)
        self._answer_finished()

    def _answer_failed(self, error: str) -> None:
        self.log_view.add_notice(f"Generation failed: {error}")
        self.notify(error, title="Generation failed", severity="error", markup=False)
        self._answer_finished()

    def _answer_finished(self) -> None:
        self._active_turn = None
        self.status.generating = False
        self.log_view.scroll_end(animate=False)
        if self.pending_swap is not None:
            name, self.pending_swap = self.pending_swap, None
            self.swap_adapter(name, automatic=True)

    def action_stop(self) -> None:
        if self.generating:
            self._cancel.set()

    def action_retry(self) -> None:
        if self.generating or not self.turns:
            self.notify("Nothing to regenerate yet.", markup=False)
            return
        last = self.turns.pop()
        self.start_answer(last.instruction, show_user=False)

    def action_new_chat(self) -> None:
        if self.generating:
            self._cancel.set()
            self._abandoned_turn = self._active_turn[0]
        self.turns.clear()
        self.last_exchange = None
        self.log_view.remove_children()
        self.notify("New conversation.", markup=False)

    # ------------------------------------------------------------------ curate

    def action_save(self) -> None:
        if self.generating:
            # The answer on screen is not finished: saving the one before it would surprise.
            self.notify("The answer is still coming: save it once it is finished (Esc "
                        "stops it).", markup=False)
            return
        if self.last_exchange is None:
            self.notify("No answer to save yet: ask something first.", markup=False)
            return
        exchange = self.last_exchange
        self.app.push_screen(CurateModal(exchange.instruction, exchange.response),
                             lambda result: self._saved(exchange, result))

    def _saved(self, exchange: Turn, result: CurateResult | None) -> None:
        if result is None:
            return
        self.saves_in_flight += 1
        self.save_example(exchange, result)
        self.set_timer(SLOW_SAVE_NOTICE_S, self._notice_slow_save)

    @work(thread=True, exit_on_error=False, group="save")
    def save_example(self, exchange: Turn, result: CurateResult) -> None:
        # A connection of its own: while another process holds the write lock, this waits
        # (up to the store's busy timeout) in this thread, not on the app's connection.
        with ExampleStore(self.app.settings.data_dir) as store:
            example_id = store.add(result.instruction, result.response,
                                   original_response=exchange.response, source="chat")
            count = store.count()
        self.post_message(ExampleSaved(exchange.instruction, exchange.response,
                                       result.instruction, result.response, example_id, count))

    def _notice_slow_save(self) -> None:
        if self.saves_in_flight:
            self.notify("Saving… the dataset is busy (another sftchat process is writing to "
                        "it); the answer is saved as soon as it is free.", markup=False)

    def on_example_saved(self, message: ExampleSaved) -> None:
        self.saves_in_flight -= 1
        # The corrected answer replaces the model's in the conversation's context too.
        for index in range(len(self.turns) - 1, -1, -1):
            if self.turns[index] == Turn(message.instruction, message.response):
                self.turns[index] = Turn(message.saved_instruction, message.saved_response)
                break
        count = message.count
        self.status.examples = count
        self.notify(f"Saved example #{message.example_id} — the dataset has {count} "
                    f"example{'' if count == 1 else 's'}.", markup=False)

    def _save_failed(self, error: str) -> None:
        # The answer is still in the conversation: ctrl+s again once the cause is fixed.
        self.saves_in_flight -= 1
        self.notify(f"{error}; the answer is still in the conversation: press ctrl+s to try "
                    "again.", title="Not saved", severity="error", markup=False, timeout=15)

    # ------------------------------------------------------------------ pin, bad answer, compare

    def _finished_turn(self, what: str) -> Turn | None:
        """The last finished turn, or None after saying why there is none to `what`."""
        if self.generating:
            self.notify(f"The answer is still coming: {what} it once it is finished.",
                        markup=False)
            return None
        if self.last_exchange is None:
            self.notify(f"No answer to {what} yet: ask something first.", markup=False)
            return None
        return self.last_exchange

    @work(thread=True, exit_on_error=False, group="store")
    def write_store(self, write) -> None:
        """`write(store)` on a connection of its own (it may wait for another process's
        lock); it returns the past-tense line to show."""
        with ExampleStore(self.app.settings.data_dir) as store:
            done = write(store)
        self.post_message(StoreWritten(done))

    def on_store_written(self, message: StoreWritten) -> None:
        self.refresh_dataset_size()
        self.notify(message.text, markup=False)

    def action_pin(self, number: str = "") -> None:
        """Pin the last turn (or turn `number` of this conversation, from 1): its answer must
        keep working (replayed before every swap)."""
        turn = self._finished_turn("pin")
        if turn is not None and number:
            if not number.isdigit() or not 1 <= int(number) <= len(self.turns):
                self.notify(f"Usage: /pin [N], N a turn of this conversation (1–"
                            f"{len(self.turns)}).", markup=False)
                return
            turn = self.turns[int(number) - 1]
        if turn is not None:
            adapter = self.app.engine.active_adapter if self.app.engine else None
            # Reviews ask a pinned prompt alone, as adapters are trained: an answer given
            # after earlier turns may have leaned on them.
            earlier = self.turns.index(turn) if turn in self.turns else 0
            alone = "" if earlier == 0 else (
                " It is replayed alone, without the earlier turns of this conversation.")
            self.write_store(lambda store: (
                f"Pinned as pin #{store.pins.add(turn.instruction, turn.response, adapter=adapter)}"
                ": every new adapter is checked against this answer before it answers." + alone))

    def action_bad_answer(self) -> None:
        """Keep the last answer as a rejected one, with no replacement (preference data)."""
        turn = self._finished_turn("flag")
        if turn is not None:
            self.write_store(lambda store: (
                f"Kept as a bad answer (#{store.add_rejected(turn.instruction, turn.response)}"
                "): it exports as preference data (sftchat data export --format kto)."))

    def action_compare(self) -> None:
        """The last prompt answered again by the base model, the adapter that answered
        before and the active one, side by side; the one picked is saved."""
        from sftchat.tui.screens.compare import CompareScreen

        turn = self._finished_turn("compare")
        engine = self.app.engine
        if turn is None or engine is None:
            return
        models = list(dict.fromkeys([None, *self.answered_before[-1:], engine.active_adapter]))
        if len(models) < 2:
            self.notify("Nothing to compare yet: only the base model has answered. Train an "
                        "adapter first.", markup=False)
            return
        self.app.push_screen(CompareScreen(engine, turn.instruction, models),
                             lambda picked: self._compared(turn, models, picked))

    def _compared(self, turn: Turn, models: list, picked) -> None:
        if picked is None:
            return
        index, answers = picked
        chosen = answers[index]
        others = [(answer, "compare") for i, answer in enumerate(answers)
                  if i != index and answer != chosen]
        self.write_store(lambda store: (
            f"Saved example #{store.add(turn.instruction, chosen, source='chat', rejected=others)}"
            f" (the answer of {models[index] or 'the base model'}; the other "
            f"{len(others)} kept as rejected answers)."))

    def action_dataset(self) -> None:
        from sftchat.tui.screens.dataset import DatasetScreen

        self.app.push_screen(DatasetScreen(self.app.settings.data_dir))

    def action_help(self) -> None:
        from sftchat.tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen())

    # ------------------------------------------------------------------ slash commands

    def run_slash_command(self, text: str) -> None:
        command, _, argument = text.partition(" ")
        argument = argument.strip()
        actions = {
            "/help": self.action_help, "/save": self.action_save, "/train": self.action_train,
            "/cancel": self.action_cancel_training, "/adapters": self.action_adapters,
            "/data": self.action_dataset, "/retry": self.action_retry,
            "/new": self.action_new_chat, "/quit": self.app.action_quit,
        }
        actions.update({"/pin": self.action_pin, "/bad": self.action_bad_answer,
                        "/compare": self.action_compare})
        if command == "/train" and argument:
            self.train_with_options(argument)
        elif command == "/pin" and argument:
            self.action_pin(argument)
        elif command == "/adapter":
            if not argument:
                self.notify("Usage: /adapter NAME|latest|previous|none", markup=False)
            else:
                self.swap_adapter(argument)
        elif command in actions:
            result = actions[command]()
            if result is not None:  # /quit is a coroutine action
                self.run_worker(result)
        else:
            self.notify(f"Unknown command {command}; /help lists them.", severity="warning",
                        markup=False)
