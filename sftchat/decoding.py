"""Token-by-token decoding for the chat engine: a generator, no thread, no streamer.

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
