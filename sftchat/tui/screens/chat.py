"""The chat screen: conversation, prompt, status line and training panel.

Nothing that can wait runs on the event loop: the model loads, answers are generated,
adapters swap and curated answers are saved in thread workers that only post past-tense
messages (`tui.messages`); a worker that fails raises, and `on_worker_state_changed` turns
that into one message for the user. Saving opens its own SQLite connection, so a CLI import
holding the write lock delays the save, never the interface (reads in WAL mode do not wait
for a writer). Training runs in a subprocess (`TrainerProcess`) whose events arrive as
messages; so does an export (`chat_export`). The engine lock guarantees an adapter swap never
lands in the middle of an answer; the screen also defers an automatic swap until the answer
completes.

A saved answer keeps its conversation: the turns before it (the context) and the system
prompt it was answered under; the curate modal shows them, to edit, drop or learn too.
"""

from __future__ import annotations

import gc
import sqlite3
import threading

from textual import on, work
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from sftchat.conversation import Turn
from sftchat.dataset.store import ExampleStore
from sftchat.errors import error_line
from sftchat.training.memory import gpu_memory_text
from sftchat.tui.messages import (
    ExampleSaved, ModelLoaded, ResponseChunkReceived, ResponseCompleted,
)
from sftchat.tui.screens.chat_commands import CommandsMixin, Exchange
from sftchat.tui.screens.chat_export import ExportMixin
from sftchat.tui.screens.chat_models import ModelsMixin
from sftchat.tui.screens.curate import CurateModal, CurateResult
from sftchat.tui.screens.dataset import OUTSIDE_CHANGES_POLL_S
from sftchat.tui.widgets.chat_log import ChatLog
from sftchat.tui.widgets.prompt_input import PromptInput
from sftchat.tui.widgets.status_line import StatusLine, model_label
from sftchat.tui.widgets.training_panel import TrainingPanel

# A save still waiting after this long says why (another process holds the dataset's lock).
SLOW_SAVE_NOTICE_S = 1.0
# How often the status line reads the GPU's memory (a driver query, microseconds).
GPU_MEMORY_POLL_S = 2.0


def same_text(one: Turn, other: Turn) -> bool:
    """The same exchange, whether or not training learns its answer."""
    return (one.instruction, one.input, one.response) == (other.instruction, other.input,
                                                          other.response)


class ChatScreen(CommandsMixin, ModelsMixin, ExportMixin, Screen):
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
        self.turn_systems: list[str] = []     # the system prompt each turn was answered under
        self.last_exchange: Exchange | None = None  # the last finished turn: what ctrl+s curates
        self.pending: list[str] = []          # prompts typed before the model was ready
        self.model_error: str | None = None   # why the model could not be loaded, if so
        self.pending_swap: str | None = None  # adapter to swap in once the answer completes
        self._turn_counter = 0
        # The answer coming: (its id, the question, the system prompt it is answered under).
        self._active_turn: tuple[int, str, str] | None = None
        # A turn whose conversation was left (ctrl+n) mid-answer: its late result is dropped.
        self._abandoned_turn: int | None = None
        self._cancel = threading.Event()
        self.saves_in_flight = 0
        self.answered_before: list[str | None] = []
        self._store_error_said = False

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
        self.start_session()
        self.refresh_dataset_size()
        # Another app or a CLI may curate into the same workspace: keep the count true.
        self._outside_changes = self._read_store(self.app.store.outside_changes)
        self.set_interval(OUTSIDE_CHANGES_POLL_S, self._notice_outside_changes)
        # Start loading after the first paint: importing torch in a worker thread holds the
        # GIL for long stretches and would otherwise delay it.
        self.call_after_refresh(self.load_model)
        self.offer_resume()

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
        count = self._read_store(self.app.store.count)
        if count is not None:
            self.status.examples = count

    def _notice_outside_changes(self) -> None:
        version = self._read_store(self.app.store.outside_changes)
        if version is not None and version != self._outside_changes:
            self._outside_changes = version
            self.refresh_dataset_size()

    def _read_store(self, read):
        """`read()` (a count, a version: no I/O to speak of, so on the event loop), or None
        with one notice if the dataset cannot be read (deleted, disk error) — said once,
        not at every poll."""
        try:
            value = read()
        except (sqlite3.Error, OSError) as error:
            if not self._store_error_said:
                self._store_error_said = True
                self.notify(f"The dataset cannot be read: {error_line(error)}",
                            title="Dataset", severity="error", markup=False, timeout=15)
            return None
        self._store_error_said = False
        return value

    # ------------------------------------------------------------------ model

    @work(thread=True, exclusive=True, exit_on_error=False, group="load")
    def load_model(self) -> None:
        self.post_message(ModelLoaded(self.app.load_engine()))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        # The model's half-million Python objects (modules, parameters, tokenizer) live as
        # long as the app: out of the collector's way, a full collection goes from ~300 ms
        # with every thread stopped (the GIL) to nothing (benchmarks/ui_latency.py).
        gc.collect()
        gc.freeze()
        self.app.engine = message.engine
        self.status.model = model_label(message.engine.loaded)
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
        self._active_turn = (turn_id, question, self.system)
        self._cancel = threading.Event()
        self.log_view.add_assistant(turn_id)
        self.status.generating = True
        self.generate(turn_id, question, list(self.turns), self.system, self.sampling,
                      self._cancel)

    @work(thread=True, exclusive=True, exit_on_error=False, group="generate")
    def generate(self, turn_id: int, question: str, history: list[Turn], system: str,
                 settings, cancel: threading.Event) -> None:
        generation = self.app.engine.generate(question, history=history, system=system,
                                              settings=settings, cancel=cancel)
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
            _, question, system = self._active_turn
            turn = Turn(question, message.text)
            self.last_exchange = Exchange(turn, len(self.turns), system)
            self.turns.append(turn)
            self.turn_systems.append(system)
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
        self.turn_systems.pop()
        self.start_answer(last.instruction, show_user=False)

    def action_new_chat(self) -> None:
        if self.generating:
            self._cancel.set()
            self._abandoned_turn = self._active_turn[0]
        self.turns.clear()
        self.turn_systems.clear()
        self.last_exchange = None
        self.log_view.remove_children()
        # The system prompt stays: it belongs to the session, not to one conversation.
        self.notify("New conversation." + (" The system prompt stays (/system none clears "
                                           "it)." if self.system else ""), markup=False)

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
        # The conversation up to that answer: the turns before it, its system prompt.
        exchange, context = self.last_exchange, self.context_of(self.last_exchange)
        modal = CurateModal(exchange.instruction, exchange.response, system=exchange.system,
                            context=context)
        self.app.push_screen(modal, lambda result: self._saved(exchange, context, result))

    def _saved(self, exchange: Exchange, context: tuple[Turn, ...],
               result: CurateResult | None) -> None:
        if result is None:
            return
        self.saves_in_flight += 1
        self.save_example(exchange, context, result)
        self.set_timer(SLOW_SAVE_NOTICE_S, self._notice_slow_save)

    @work(thread=True, exit_on_error=False, group="save")
    def save_example(self, exchange: Exchange, context: tuple[Turn, ...],
                     result: CurateResult) -> None:
        # A connection of its own: while another process holds the write lock, this waits
        # (up to the store's busy timeout) in this thread, not on the app's connection.
        with ExampleStore(self.app.settings.data_dir) as store:
            example_id = store.add(result.instruction, result.response,
                                   original_response=exchange.response, source="chat",
                                   system=result.system, context=result.context)
            count = store.count()
        # The earlier turns the user corrected (those dropped from the example stay as
        # they are in the chat).
        corrected = tuple((before, Turn(after.instruction, after.response, after.input))
                          for before, after in zip(context, result.earlier)
                          if after is not None and not same_text(before, after))
        self.post_message(ExampleSaved(exchange.instruction, exchange.response,
                                       result.instruction, result.response, example_id, count,
                                       corrected))

    def _notice_slow_save(self) -> None:
        if self.saves_in_flight:
            self.notify("Saving… the dataset is busy (another sftchat process is writing to "
                        "it); the answer is saved as soon as it is free.", markup=False)

    def on_example_saved(self, message: ExampleSaved) -> None:
        self.saves_in_flight -= 1
        # The corrected answer (and earlier turns corrected with it) replace the model's in
        # the conversation's context too: the next answer follows them.
        corrections = [(Turn(message.instruction, message.response),
                        Turn(message.saved_instruction, message.saved_response)),
                       *message.earlier]
        for before, after in corrections:
            for index in range(len(self.turns) - 1, -1, -1):
                if self.turns[index] == before:
                    self.turns[index] = after
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
