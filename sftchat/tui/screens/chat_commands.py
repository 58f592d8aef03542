"""The chat screen's commands: the slash commands, the session's system prompt and sampling,
and what a finished turn can become besides a saved example — a pin, a bad answer, a
comparison. A mixin of `ChatScreen` (kept apart so each file holds one job).

Every turn is kept with the conversation it was answered in: the turns before it (the
context) and the system prompt in force when it was answered. A pin, a bad answer or a
compared answer stores both, as a saved example does, so what is replayed or trained on is
what the model was asked.

`/system TEXT` sets the system prompt from the next answer on (`/system` shows it, `/system
none` clears it); it starts as `system` in sftchat.toml and survives a new conversation.
`/set temperature|top_p|max_new_tokens VALUE` changes sampling for this session (checked as
the toml's `[generation]` is); `/set` shows the values. The status line shows both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from textual import work

from sftchat.config import ConfigError, GenerationSettings, validate_generation
from sftchat.conversation import Turn
from sftchat.dataset.pins import Pins
from sftchat.dataset.store import ExampleStore
from sftchat.text import one_line, strip_control
from sftchat.tui.messages import StoreWritten
from sftchat.tui.widgets.prompt_input import PromptInput
from sftchat.tui.widgets.status_line import sampling_text

# `/system none` clears the system prompt (as `/adapter none` answers with no adapter).
NO_SYSTEM = "none"
# What `/set` changes, and how its value is read.
SAMPLING_KEYS = {"temperature": float, "top_p": float, "max_new_tokens": int}
SET_USAGE = "/set temperature|top_p|max_new_tokens VALUE"


@dataclass(frozen=True)
class Exchange:
    """A finished turn of the chat: `index` is its place in the screen's turns (the turns
    before it are its context) and `system` the system prompt it was answered under."""

    turn: Turn
    index: int = 0
    system: str = ""

    @property
    def instruction(self) -> str:
        return self.turn.instruction

    @property
    def response(self) -> str:
        return self.turn.response


class CommandsMixin:
    """Slash commands, system prompt, sampling, pin / bad answer / compare for `ChatScreen`
    (which provides `turns`, `turn_systems`, `last_exchange`, `generating`, `status`,
    `log_view` and the actions the commands call)."""

    system: str                     # the system prompt of the next answers ("": none)
    sampling: GenerationSettings    # this session's sampling (`/set`)

    def start_session(self) -> None:
        """The session's system prompt and sampling, as the workspace's settings give them."""
        settings = self.app.settings
        self.system = settings.system
        self.sampling = settings.generation
        self.status.sampling = sampling_text(self.sampling)
        self.status.system = bool(self.system)

    def context_of(self, exchange: Exchange) -> tuple[Turn, ...]:
        """The turns before `exchange` in this conversation, as they stand now (a save may
        have corrected some)."""
        return tuple(self.turns[:exchange.index])

    # ------------------------------------------------------------------ slash commands

    def run_slash_command(self, text: str) -> None:
        # The command is the first word; the rest (newlines included: a system prompt may
        # have several lines) is its argument.
        command, argument = (text.split(maxsplit=1) + [""])[:2]
        argument = argument.strip()
        actions = {
            "/help": self.action_help, "/save": self.action_save, "/train": self.action_train,
            "/cancel": self.action_cancel_training, "/adapters": self.action_adapters,
            "/data": self.action_dataset, "/retry": self.action_retry,
            "/new": self.action_new_chat, "/quit": self.app.action_quit,
            "/pin": self.action_pin, "/bad": self.action_bad_answer,
            "/compare": self.action_compare,
        }
        if command == "/train" and argument:
            self.train_with_options(argument)
        elif command == "/pin" and argument:
            self.action_pin(argument)
        elif command == "/system":
            self.set_system(argument)
        elif command == "/set":
            self.set_sampling(argument)
        elif command == "/export":
            self.export_command(argument)
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

    def set_system(self, text: str) -> None:
        """`/system TEXT` sets the system prompt for the next answers, `/system none` clears
        it, `/system` alone shows it."""
        if not text:
            shown = (f"System prompt: {strip_control(self.system)}" if self.system else
                     "No system prompt. /system TEXT sets one (from the next answer on).")
            self.notify(shown, title="/system", markup=False, timeout=10)
            return
        self.system = "" if text == NO_SYSTEM else text
        self.status.system = bool(self.system)
        if self.system:
            self.log_view.add_notice("── system prompt: "
                                     + one_line(strip_control(self.system), 60) + " ──")
            self.notify("System prompt set: the next answers follow it, and what you save "
                        "keeps it (/system none clears it).", markup=False)
        else:
            self.log_view.add_notice("── no system prompt ──")
            self.notify("System prompt cleared.", markup=False)

    def set_sampling(self, text: str) -> None:
        """`/set KEY VALUE` (or KEY=VALUE) changes sampling for this session; `/set` alone
        shows the values."""
        if not text:
            values = ", ".join(f"{key} {getattr(self.sampling, key):g}"
                               for key in SAMPLING_KEYS)
            self.notify(f"Sampling: {values}. Change one with {SET_USAGE}.", title="/set",
                        markup=False, timeout=10)
            return
        key, _, value = text.replace("=", " ", 1).partition(" ")
        key, value = key.strip(), value.strip()
        try:
            self.sampling = self._changed_sampling(key, value)
        except ConfigError as exc:
            self.notify(str(exc), title="/set", severity="error", markup=False, timeout=10)
            return
        self.status.sampling = sampling_text(self.sampling)
        self.notify(f"{key} = {getattr(self.sampling, key):g} from the next answer on.",
                    markup=False)

    def _changed_sampling(self, key: str, value: str) -> GenerationSettings:
        if key not in SAMPLING_KEYS:
            raise ConfigError(f"/set: unknown setting {key!r}; use {SET_USAGE}")
        kind = SAMPLING_KEYS[key]
        if not value:
            raise ConfigError(f"/set {key}: give a value, e.g. {SET_USAGE}")
        try:
            number = kind(value)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ConfigError(f"/set {key}: must be {what}, not {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"/set {key}: must be a finite number, not {value!r}")
        return validate_generation(dataclasses.replace(self.sampling, **{key: number}), "/set")

    def action_system_prompt(self) -> None:
        """The palette's entry: `/system` with the current prompt, in the input to edit."""
        self._prefill(f"/system {self.system}" if self.system else "/system ")

    def action_sampling(self) -> None:
        """The palette's entry: shows the values and leaves `/set ` in the input."""
        self.set_sampling("")
        self._prefill("/set ")

    def _prefill(self, text: str) -> None:
        prompt = self.query_one(PromptInput)
        prompt.text = text
        prompt.focus()
        prompt.move_cursor(prompt.document.end)

    # ------------------------------------------------------------------ pin, bad answer, compare

    def _finished_turn(self, what: str) -> Exchange | None:
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
        """Pin the last turn (or turn `number` of this conversation, from 1) with the turns
        before it: its answer must keep working (replayed before every swap)."""
        exchange = self._finished_turn("pin")
        if exchange is not None and number:
            if not number.isdigit() or not 1 <= int(number) <= len(self.turns):
                self.notify(f"Usage: /pin [N], N a turn of this conversation (1–"
                            f"{len(self.turns)}).", markup=False)
                return
            index = int(number) - 1
            exchange = Exchange(self.turns[index], index, self.turn_systems[index])
        if exchange is None:
            return
        turn, context, system = exchange.turn, self.context_of(exchange), exchange.system
        adapter = self.app.engine.active_adapter if self.app.engine else None

        def pin(store) -> str:
            pin_id = Pins(store).add(turn.instruction, turn.response, adapter=adapter,
                                    system=system, context=context)
            return (f"Pinned as pin #{pin_id}: every new adapter is checked against this "
                    "answer before it answers.")

        self.write_store(pin)

    def action_bad_answer(self) -> None:
        """Keep the last answer as a rejected one, with no replacement (preference data)."""
        exchange = self._finished_turn("flag")
        if exchange is None:
            return
        turn, context, system = exchange.turn, self.context_of(exchange), exchange.system

        def keep(store) -> str:
            rejected_id = store.add_rejected(turn.instruction, turn.response, system=system,
                                             context=context)
            return (f"Kept as a bad answer (#{rejected_id}): it exports as preference data "
                    "(sftchat data export --format kto).")

        self.write_store(keep)

    def action_compare(self) -> None:
        """The last prompt answered again (after the same turns, under the same system
        prompt) by the base model, the adapter that answered before and the active one, side
        by side; the one picked is saved."""
        from sftchat.tui.screens.compare import CompareScreen

        exchange = self._finished_turn("compare")
        engine = self.app.engine
        if exchange is None or engine is None:
            return
        models = list(dict.fromkeys([None, *self.answered_before[-1:], engine.active_adapter]))
        if len(models) < 2:
            self.notify("Nothing to compare yet: only the base model has answered. Train an "
                        "adapter first.", markup=False)
            return
        context = self.context_of(exchange)
        screen = CompareScreen(engine, exchange.instruction, models, history=context,
                               system=exchange.system, settings=self.sampling)
        self.app.push_screen(screen, lambda picked: self._compared(exchange, context, models,
                                                                   picked))

    def _compared(self, exchange: Exchange, context: tuple[Turn, ...], models: list,
                  picked) -> None:
        if picked is None:
            return
        index, answers = picked
        chosen = answers[index]
        # A column with no answer (its adapter was deleted meanwhile) rejects nothing.
        others = [(answer, "compare") for i, answer in enumerate(answers)
                  if i != index and answer and answer != chosen]
        instruction, system = exchange.instruction, exchange.system

        def save(store) -> str:
            example_id = store.add(instruction, chosen, source="chat", rejected=others,
                                   system=system, context=context)
            return (f"Saved example #{example_id} (the answer of "
                    f"{models[index] or 'the base model'}; the other {len(others)} kept as "
                    "rejected answers).")

        self.write_store(save)

    def action_dataset(self) -> None:
        from sftchat.tui.screens.dataset import DatasetScreen

        self.app.push_screen(DatasetScreen(self.app.settings.data_dir))

    def action_help(self) -> None:
        from sftchat.tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen())
