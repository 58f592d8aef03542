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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from sftchat.adapters import registry as adapter_registry
from sftchat.adapters.slots import AdapterSlots
from sftchat.adapters.registry import AdapterError, AdapterInfo
from sftchat.config import GenerationSettings, Settings
from sftchat.decoding import IncrementalDecoder, cut_at_stop, decode_tokens, safe_length
from sftchat.models.loader import LoadedModel, load_model
from sftchat.prompts import (
    Turn, encode_prompt, resolve_template, stop_strings, stop_token_ids,
)

# The prompt always keeps at least this share of the context, even for long answers.
MIN_PROMPT_SHARE = 0.5


@dataclass
class SwapResult:
    name: str | None     # the adapter now answering; None is the base model
    loaded: bool         # True when its weights were read from disk just now
    seconds: float
    info: AdapterInfo | None = None  # its metadata (None: the base model)


@dataclass
class Generation:
    """One answer being generated. Iterate for text pieces; read the totals afterwards."""

    pieces: Iterator[str]
    notice: str | None = None          # set when the prompt had to be truncated
    adapter: str | None = None         # which adapter answered
    text: str = ""
    finish_reason: str = ""            # "eos" | "stop" | "length" | "cancelled"
    new_tokens: int = 0
    prompt_tokens: int = 0
    first_token_seconds: float | None = None
    seconds: float = 0.0
    _started: float = field(default_factory=time.perf_counter)

    def __iter__(self) -> Iterator[str]:
        return self.pieces

    def collect(self) -> str:
        for _ in self.pieces:
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
        self._lock = threading.RLock()

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
        return self.slots.active

    @property
    def template(self) -> str:
        """The template the next answer is rendered with: the active adapter's own."""
        with self._lock:
            if self.slots.active is not None:
                return self.slots.template_of(self.slots.active)
            return self.base_template

    @property
    def loaded_adapters(self) -> list[str]:
        return self.slots.names

    # ------------------------------------------------------------------ adapters

    def load_adapter(self, info: AdapterInfo) -> bool:
        """Load `info` into the base model unless already loaded; True if read from disk."""
        with self._lock:
            return self.slots.load(info)

    def prepare_slot(self, rank: int, alpha: int, dropout: float = 0.0) -> None:
        """Inject empty LoRA layers for the adapter a training run will publish, so that its
        swap only has to copy weights. Call it while the trainer runs."""
        with self._lock:
            self.slots.prepare(rank, alpha, dropout)

    def use_adapter(self, name: str | None) -> SwapResult:
        """Make `name` ("latest", "none"/None, or an adapter name) answer from the next turn.

        Waits for a running generation to finish first, so a swap never lands mid-answer.
        """
        started = time.perf_counter()
        if self.adapters_dir is None and name not in (None, "none"):
            raise AdapterError("this engine has no adapters folder")
        info = adapter_registry.resolve(self.adapters_dir, name) if self.adapters_dir else None
        with self._lock:
            loaded = info is not None and self.slots.load(info)
            self.slots.activate(info.name if info else None)
        return SwapResult(info.name if info else None, loaded, time.perf_counter() - started,
                          info)

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[AdapterInfo | None]:
        """Answer as `name` (an adapter; None or "none": the base) for the calls inside, with
        the engine held so that no chat answer runs in between; the adapter that was
        answering answers again afterwards. Yields the adapter's info (None: the base)."""
        with self._lock:
            previous = self.slots.active
            swapped = self.use_adapter(name)
            try:
                yield swapped.info
            finally:
                self.slots.activate(previous)

    def unload_adapter(self, name: str) -> None:
        """Forget a loaded adapter (e.g. after `adapters rm`); the base answers if it was active."""
        with self._lock:
            self.slots.unload(name)

    # ------------------------------------------------------------------ generation

    def max_prompt_tokens(self, max_new_tokens: int) -> int:
        context = self.loaded.context_length
        return max(context - max_new_tokens, int(context * MIN_PROMPT_SHARE))

    def generate(self, instruction: str, history: Sequence[Turn] = (), input: str = "",
                 settings: GenerationSettings | None = None,
                 cancel: threading.Event | None = None, system: str = "") -> Generation:
        """Start answering `instruction` after `history`, under the `system` prompt; iterate
        the result for text."""
        settings = settings or self.generation
        cancel = cancel or threading.Event()

        def encode(template: str):
            return encode_prompt(self.tokenizer, template, instruction, input, history,
                                 max_tokens=self.max_prompt_tokens(settings.max_new_tokens),
                                 system=system)

        template = self.template
        prompt = encode(template)
        generation = Generation(pieces=iter(()), notice=prompt.notice(),
                                adapter=self.slots.active, prompt_tokens=len(prompt.ids))
        generation.pieces = self._stream(generation, template, prompt.ids, encode, settings,
                                         cancel)
        return generation

    def _stream(self, generation: Generation, template: str, prompt_ids: list[int], encode,
                settings: GenerationSettings, cancel: threading.Event) -> Iterator[str]:
        # Holding the lock for the whole answer is what keeps swaps out of it.
        with self._lock, self.slots.answering_context():
            generation.adapter = self.slots.active
            if self.template != template:
                # An adapter with another template was swapped in since generate() was
                # called: the prompt must be the one that adapter was trained on.
                template = self.template
                prompt = encode(template)
                prompt_ids, generation.notice = prompt.ids, prompt.notice()
                generation.prompt_tokens = len(prompt_ids)
            yield from self._stream_locked(generation, template, prompt_ids, settings, cancel)

    def _stream_locked(self, generation: Generation, template: str, prompt_ids: list[int],
                       settings: GenerationSettings, cancel: threading.Event) -> Iterator[str]:
        stops = stop_strings(template)
        stop_ids = stop_token_ids(template, self.tokenizer)
        decoder = IncrementalDecoder(self.tokenizer)
        text = ""
        emitted = 0
        generation.finish_reason = "length"
        try:
            for token in decode_tokens(self.model, prompt_ids, settings, stop_ids, cancel):
                if generation.first_token_seconds is None:
                    generation.first_token_seconds = time.perf_counter() - generation._started
                generation.new_tokens += 1
                if token in stop_ids:
                    generation.finish_reason = "eos"
                    break
                piece = decoder.add([token])
                if not piece:
                    continue
                text += piece
                text, hit = cut_at_stop(text, stops, len(text) - len(piece))
                if hit:
                    generation.finish_reason = "stop"
                    break
                safe = safe_length(text, stops)
                if safe > emitted:
                    generation.text = text
                    yield text[emitted:safe]
                    emitted = safe
            if cancel.is_set() and generation.finish_reason == "length":
                generation.finish_reason = "cancelled"
            if generation.finish_reason != "stop":
                text = cut_at_stop(text + decoder.flush(), stops)[0]
            generation.text = text
            if emitted < len(text):
                yield text[emitted:]
        finally:
            generation.seconds = time.perf_counter() - generation._started
