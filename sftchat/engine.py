"""ChatEngine: streaming, cancellable generation and LoRA adapter hot-swap on one loaded base.

The engine owns one base model for the life of the process and the adapters loaded into it
(`sftchat.adapters.slots`: PEFT adapters switched in milliseconds, never a base reload).

`generate()` returns a `Generation`: iterate it for text pieces as they are produced, in the
consumer's own thread (`sftchat.decoding`); it stops at the template's end token, at a stop
string (the model starting a new `### Instruction:`), at `max_new_tokens`, or when the
`cancel` event is set — from any thread. An adapter switch waits for a running generation
to finish: swaps happen between turns, never mid-answer.

Each adapter answers through the template it was trained with (recorded in its
`sftchat.json`), whatever the current setting: the base answers through the setting's
template ("auto" resolved for this tokenizer), so a template mismatch cannot happen.

No Textual here: the TUI talks to this class; tests and the CLI use it directly.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from sftchat.adapters import registry as adapter_registry
from sftchat.adapters.registry import AdapterError, AdapterInfo
from sftchat.adapters.slots import AdapterSlots
from sftchat.config import GenerationSettings, Settings
from sftchat.decoding import IncrementalDecoder, cut_at_stop, decode_tokens, safe_length
from sftchat.engine_thread import BACKGROUND, CHAT, PARK, SWAP, Cancel, EngineThread, Steps
from sftchat.models.loader import LoadedModel, load_model
from sftchat.prompts import (
    PromptEncoding, Turn, encode_prompt, resolve_template, stop_strings, stop_token_ids,
)

# The prompt always keeps at least this share of the context, even for long answers.
MIN_PROMPT_SHARE = 0.5
# Pieces an answer may run ahead of its reader before it pauses (and lets other jobs run).
MAX_UNREAD = 256
# `generate(adapter=CHATS)`: answer as the chat's adapter of the moment.
CHATS = "<the chat's adapter>"


@dataclass
class SwapResult:
    name: str | None     # the adapter now answering; None is the base model
    loaded: bool         # True when its weights were read from disk just now
    seconds: float
    info: AdapterInfo | None = None  # its metadata (None: the base model)


@dataclass
class Answer:
    """What an answer job produced so far (written on the engine thread only)."""

    adapter: str | None = None         # which adapter answered
    notice: str | None = None          # set when the prompt had to be truncated
    prompt_tokens: int = 0
    text: str = ""
    finish_reason: str = ""            # "eos" | "stop" | "length" | "cancelled"
    new_tokens: int = 0
    first_token_seconds: float | None = None
    seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter)


def _answer_field(name: str, doc: str) -> property:
    return property(lambda self: getattr(self._answer, name), doc=doc)


class _End:
    """The last item an answer job puts in its queue: `error` if it failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Generation:
    """One answer being generated. Iterate for text pieces; read the totals afterwards.

    `notice`, `prompt_tokens` and `adapter` are known once the prompt is encoded (reading
    them waits for that); the others are final once the iteration has ended."""

    text = _answer_field("text", "the answer so far (all of it, after the iteration)")
    finish_reason = _answer_field("finish_reason", "eos | stop | length | cancelled")
    new_tokens = _answer_field("new_tokens", "tokens generated")
    first_token_seconds = _answer_field("first_token_seconds", "time to the first token")
    seconds = _answer_field("seconds", "time from the request to the end")

    def __init__(self, answer: Answer, pieces: Iterator[str], ready: threading.Event) -> None:
        self._answer = answer
        self._pieces = pieces
        self._ready = ready

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def _prepared(self) -> Answer:
        self._ready.wait()
        return self._answer

    @property
    def notice(self) -> str | None:
        return self._prepared().notice

    @property
    def prompt_tokens(self) -> int:
        return self._prepared().prompt_tokens

    @property
    def adapter(self) -> str | None:
        return self._prepared().adapter

    def collect(self) -> str:
        for _ in self._pieces:
            pass
        return self.text


class ChatEngine:
    """A loaded base model, its adapters, and generation through the one prompt template."""

    def __init__(self, loaded: LoadedModel, template: str, adapters_dir: Path | None = None,
                 generation: GenerationSettings | None = None) -> None:
        self.loaded = loaded
        self.base_template = resolve_template(template, loaded.tokenizer)
        self.adapters_dir = adapters_dir
        self.generation = generation or GenerationSettings()
        self.slots = AdapterSlots(loaded)
        self.jobs = EngineThread()
        # The thread holds no reference to the engine: when the engine goes, so does it.
        weakref.finalize(self, self.jobs.close)
        self._in_use: Counter[str] = Counter()    # adapter -> live jobs answering as it
        self._unload_later: set[str] = set()      # unloaded as soon as no job uses them
        self.slots.in_use = lambda: {name for name, n in self._in_use.items() if n}

    @classmethod
    def from_settings(cls, settings: Settings) -> "ChatEngine":
        loaded = load_model(settings.model, settings.device, settings.quantize,
                            settings.trust_remote_code)
        return cls(loaded, settings.template, settings.adapters_dir, settings.generation)

    # ------------------------------------------------------------------ properties

    @property
    def model(self):
        return self.slots.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def active_adapter(self) -> str | None:
        """The adapter the chat answers with (None: the base model)."""
        return self.slots.active

    @property
    def template(self) -> str:
        """The template the next answer is rendered with: the active adapter's own."""
        return self.template_for(self.slots.active)

    def template_for(self, name: str | None) -> str:
        """The template `name` (a loaded adapter; None: the base) answers through."""
        return self.slots.template_of(name) if name is not None else self.base_template

    @property
    def loaded_adapters(self) -> list[str]:
        return self.slots.names

    def cancel_all(self) -> None:
        """Cancel every answer, replay and load running or waiting (the app quits)."""
        self.jobs.cancel_all()

    # ------------------------------------------------------------------ adapters

    def load_adapter(self, info: AdapterInfo) -> bool:
        """Load `info` into the base model unless already loaded; True if read from disk."""
        return self.jobs.call(lambda: self.slots.load(info), SWAP, "load")

    def prepare_slot(self, rank: int, alpha: int, dropout: float = 0.0) -> None:
        """Inject empty LoRA layers for the adapter a training run will publish, so that its
        swap only has to copy weights. Call it while the trainer runs."""
        self.jobs.call(lambda: self.slots.prepare(rank, alpha, dropout), BACKGROUND, "prepare")

    def use_adapter(self, name: str | None) -> SwapResult:
        """Make `name` ("latest", "none"/None, or an adapter name) answer from the next turn
        (an answer in progress finishes as the adapter it started with)."""
        started = time.perf_counter()
        info = self._resolve(name)

        def swap() -> bool:
            loaded = info is not None and self.slots.load(info)
            self.slots.activate(info.name if info else None)
            return loaded

        loaded = self.jobs.call(swap, SWAP, "swap")
        return SwapResult(info.name if info else None, loaded, time.perf_counter() - started,
                          info)

    def unload_adapter(self, name: str) -> None:
        """Forget a loaded adapter (e.g. after `adapters rm`); the base answers if it was
        active. One that a job is answering as goes when that job ends."""
        def unload() -> None:
            if self._in_use[name]:
                self._unload_later.add(name)
            else:
                self.slots.unload(name)

        self.jobs.call(unload, SWAP, "unload")

    def _resolve(self, name: str | None) -> AdapterInfo | None:
        if name in (None, "none"):
            return None
        if self.adapters_dir is None:
            raise AdapterError("this engine has no adapters folder")
        return adapter_registry.resolve(self.adapters_dir, name)

    # ------------------------------------------------------------------ for jobs
    # The methods below run on the engine thread, inside a job's steps.

    def ensure_loaded(self, name: str | None) -> str | None:
        """Load adapter `name` ("latest", a name; None or "none": the base) unless it is
        loaded; the name it resolved to (None: the base)."""
        if name in (None, "none"):
            return None
        if name in self.slots.names:
            return name
        info = self._resolve(name)
        self.slots.load(info)
        return info.name

    @contextlib.contextmanager
    def answering_as(self, name: str | None) -> Iterator[None]:
        """Keep adapter `name` loaded (not evicted, not unloaded) for the job inside; the
        job applies it before each step (`slots.apply`)."""
        if name is None:
            yield
            return
        self._in_use[name] += 1
        try:
            yield
        finally:
            self._in_use[name] -= 1
            if not self._in_use[name]:
                del self._in_use[name]
                if name in self._unload_later:
                    self._unload_later.discard(name)
                    self.slots.unload(name)

    def max_prompt_tokens(self, max_new_tokens: int) -> int:
        context = self.loaded.context_length
        return max(context - max_new_tokens, int(context * MIN_PROMPT_SHARE))

    def encode(self, template: str, instruction: str, history: Sequence[Turn] = (),
               input: str = "", system: str = "", max_new_tokens: int = 256) -> PromptEncoding:
        return encode_prompt(self.tokenizer, template, instruction, input, history,
                             max_tokens=self.max_prompt_tokens(max_new_tokens), system=system)

    def answer_steps(self, name: str | None, prompt_ids: list[int], template: str,
                     settings: GenerationSettings, cancel: Cancel, answer: Answer,
                     emit: Callable[[str], None] | None = None) -> Steps:
        """Generate as adapter `name` after `prompt_ids`, one step per token, into `answer`
        (and each new piece of text to `emit`)."""
        stops = stop_strings(template)
        stop_ids = stop_token_ids(template, self.tokenizer)
        decoder = IncrementalDecoder(self.tokenizer)
        self.slots.apply(name)
        tokens = decode_tokens(self.model, prompt_ids, settings, stop_ids, cancel)
        text = ""
        emitted = 0
        answer.finish_reason = "length"
        try:
            while True:
                self.slots.apply(name)     # another job may have run as another adapter
                token = next(tokens, None)
                if token is None:
                    break
                if answer.first_token_seconds is None:
                    answer.first_token_seconds = time.perf_counter() - answer.started
                answer.new_tokens += 1
                if token in stop_ids:
                    answer.finish_reason = "eos"
                    break
                piece = decoder.add([token])
                if piece:
                    text += piece
                    text, hit = cut_at_stop(text, stops, len(text) - len(piece))
                    if hit:
                        answer.finish_reason = "stop"
                        break
                    safe = safe_length(text, stops)
                    if safe > emitted:
                        answer.text = text
                        if emit is not None:
                            emit(text[emitted:safe])
                        emitted = safe
                yield
            if cancel.is_set() and answer.finish_reason == "length":
                answer.finish_reason = "cancelled"
            if answer.finish_reason != "stop":
                text = cut_at_stop(text + decoder.flush(), stops)[0]
            answer.text = text
            if emit is not None and emitted < len(text):
                emit(text[emitted:])
        finally:
            tokens.close()
            answer.seconds = time.perf_counter() - answer.started

    # ------------------------------------------------------------------ generation

    def generate(self, instruction: str, history: Sequence[Turn] = (), input: str = "",
                 settings: GenerationSettings | None = None,
                 cancel: threading.Event | None = None, system: str = "",
                 adapter: str | None = CHATS, priority: int = CHAT) -> Generation:
        """Start answering `instruction` after `history`, under the `system` prompt, as
        `adapter` (default: the chat's; None or "none": the base); iterate the result."""
        settings = settings or self.generation
        cancel = Cancel(cancel)
        answer = Answer()
        ready = threading.Event()
        pieces: queue.SimpleQueue = queue.SimpleQueue()

        def steps() -> Steps:
            try:
                name = self.ensure_loaded(self.slots.active if adapter == CHATS else adapter)
                yield
                with self.answering_as(name):
                    template = self.template_for(name)
                    prompt = self.encode(template, instruction, history, input, system,
                                         settings.max_new_tokens)
                    answer.adapter, answer.notice = name, prompt.notice()
                    answer.prompt_tokens = len(prompt.ids)
                    ready.set()
                    for _ in self.answer_steps(name, prompt.ids, template, settings, cancel,
                                               answer, pieces.put):
                        yield PARK if pieces.qsize() > MAX_UNREAD else None
            except BaseException as error:
                pieces.put(_End(error))
                raise
            else:
                pieces.put(_End())
            finally:
                ready.set()

        job = self.jobs.submit(steps(), priority, cancel, "answer")
        generation = Generation(answer, self._read(pieces, job), ready)
        # Nobody can read it any more: stop generating it.
        weakref.finalize(generation, self._abandon, job)
        return generation

    def _abandon(self, job) -> None:
        job.cancel.set()
        self.jobs.wake(job)

    def _read(self, pieces: queue.SimpleQueue, job) -> Iterator[str]:
        while True:
            try:
                item = pieces.get(timeout=0.1)
            except queue.Empty:
                self.jobs.wake(job)    # parked while we were reading the last pieces
                continue
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            if pieces.qsize() < MAX_UNREAD // 2:
                self.jobs.wake(job)
            yield item
