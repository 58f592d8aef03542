"""Token-by-token decoding for the chat engine: token ids in, text out, as it comes.

- `decode_tokens`: a generator of token ids, no thread, no streamer;
- `IncrementalDecoder`: those ids to text in constant time per token;
- `cut_at_stop` / `safe_length`: where a stop string (the model starting a new turn) cuts the
  text, and how much of it can be shown before a stop string might still begin.

`decode_tokens` prefills the prompt once, then feeds back one token at a time with the
key/value cache, yielding each new token id as soon as it is chosen. Running in the
consumer's own thread is what makes streaming free: with `model.generate` in a helper
thread and a streamer, every token crossed threads, and the hand-over waited on Python's
GIL switch interval (≈5 ms) — half the throughput on a small model (benchmarks/RESULTS.md).

Greedy decoding picks the arg-max, exactly as `model.generate(do_sample=False)` does (a test
checks the tokens are identical); sampling applies temperature, then nucleus (top-p)
filtering, then draws from a private `torch.Generator` seeded per request, so a seed fixes
an answer without touching the global RNG.
"""

from __future__ import annotations

import functools
import threading
from typing import Iterator, Sequence

from sftchat.config import GenerationSettings


def _sample(logits, settings: GenerationSettings, generator):
    import torch

    if settings.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / settings.temperature
    if settings.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token once the mass before it already reaches top_p (always keep the first).
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= settings.top_p
        sorted_logits[drop] = float("-inf")
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    probabilities = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probabilities, 1, generator=generator))


def _accepts(model, argument: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return argument in _forward_parameters(type(base))


@functools.lru_cache(maxsize=None)
def _forward_parameters(model_class) -> frozenset[str]:
    """The keyword arguments a model class's forward takes (read once per class)."""
    import inspect

    return frozenset(inspect.signature(model_class.forward).parameters)


def decode_tokens(model, prompt_ids: Sequence[int], settings: GenerationSettings,
                  stop_ids: Sequence[int], cancel: threading.Event) -> Iterator[int]:
    """Yield new token ids until a stop id (yielded too), `max_new_tokens`, or `cancel`."""
    import torch

    device = model.device
    generator = torch.Generator(device="cpu")
    if settings.seed is not None:
        generator.manual_seed(settings.seed)
    else:
        generator.seed()
    stop = set(stop_ids)
    # Only the last position's logits are needed: skip the vocabulary projection for the
    # rest of the prompt, as `generate` does.
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    # transformers renamed `past_key_values` to `cache` (5.2x); older releases know only the
    # old name, newer ones warn about it.
    cache_argument = "cache" if _accepts(model, "cache") else "past_key_values"
    # no_grad, not inference_mode: bitsandbytes repacks 4-bit weights on their first CPU
    # forward, and tensors made in inference mode could not be updated in place later
    # (PEFT does when an adapter loads).
    with torch.no_grad():
        inputs = torch.tensor([list(prompt_ids)], device=device)
        output = model(input_ids=inputs, use_cache=True, **extra)
        for _ in range(settings.max_new_tokens):
            if cancel.is_set():
                return
            token = _sample(output.logits[0, -1].float().cpu(), settings, generator)
            yield token
            if token in stop:
                return
            cache = getattr(output, "cache", None)
            if cache is None:
                cache = output.past_key_values
            output = model(input_ids=torch.tensor([[token]], device=device),
                           use_cache=True, **{cache_argument: cache})


class IncrementalDecoder:
    """Token ids in, new text out, in constant time per token.

    Decoding the whole answer again for every token costs O(n) each, O(n²) in all, and
    competes with generation for the GIL. Like text-generation-inference, this decodes only
    a short window: the text of the tokens since `prefix` minus the text they had before the
    newest ones. A character split over several byte tokens shows as U+FFFD until its last
    byte arrives, so such a delta is held back.
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0   # start of the decoding window
        self.read = 0     # tokens whose text has been returned

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        """Whatever is held back at the end (an incomplete character is dropped)."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:]).rstrip("\ufffd")
        self.prefix = self.read = len(self.ids)
        return after[len(before):] if len(after) > len(before) else ""


def cut_at_stop(text: str, stops: Sequence[str], new_from: int = 0) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string (and the blank line leading to it).

    Only a stop that ends at or after `new_from` is looked for: the text before it was
    already checked, which keeps this constant-time per token."""
    cut = min((index for index in (
        text.find(stop, max(0, new_from - len(stop) + 1)) for stop in stops) if index >= 0),
        default=-1)
    if cut < 0:
        return text, False
    return text[:cut].rstrip("\n"), True


def safe_length(text: str, stops: Sequence[str]) -> int:
    """How much of `text` can be shown now: hold back an incomplete UTF-8 character and any
    tail that might be the start of a stop string (or the newlines before one)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for stop in stops:
        if stop[0] not in text[max(0, end - len(stop) + 1):end]:
            continue  # the tail cannot be the start of this stop string
        for size in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:size]):
                end -= size
                break
    while end and text[end - 1] == "\n":
        end -= 1
    return end
