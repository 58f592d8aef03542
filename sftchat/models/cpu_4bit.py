"""bitsandbytes' 4-bit layers on a CPU: the fast packed layout for answers, never for training.

bitsandbytes (0.50) has two CPU paths for a 4-bit NF4 `Linear4bit`:

- plain: each matrix product dequantizes the weight and multiplies in the compute dtype; its
  autograd formula (`MatMul4Bit`) is right, so QLoRA trains through it.
- packed, on CPUs with AVX512-BF16 only: the first forward that runs in eval mode without grad
  converts the layer's weight, for good, to a CPU-packed layout
  (`quant_state.packing_format_for_cpu`); from then on `matmul_4bit` calls a fused bf16 kernel
  (`gemv_4bit`) that decodes several times faster — and has **no autograd formula**. A
  backward through it is silently wrong (gradients ~1000x too small on SmolLM2: training after
  one such pass learned nothing and wrecked the model).

So sftchat uses the packed path where it is right and fast — the chat, the review, compare and
`sftchat eval` answer through it untouched — and keeps every weight of a model that trains in
the plain layout (`keep_trainable`). That was chosen over a packed forward with a hand-written
backward because it trains on exactly the same arithmetic on every CPU (the plain path is what
runs everywhere, the tests included) and because the packed half can only be measured on a CPU
with the instruction set (benchmarks/cpu_4bit_paths.py; RESULTS.md §12).
`check_trainable` is the guard: a run refuses to take a step through a packed weight, whatever
a future bitsandbytes decides to pack and when.
"""

from __future__ import annotations

from typing import Iterator


def packed_layout_supported() -> bool:
    """Whether bitsandbytes would pack 4-bit weights on this CPU (it has AVX512-BF16)."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:  # an older bitsandbytes: no packed layout at all
        return False
    return bool(has_avx512bf16())


def _linear_4bit_layers(model) -> Iterator[tuple[str, object]]:
    """(name, layer) for every bitsandbytes `Linear4bit` of `model`."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return iter(())
    return ((name, module) for name, module in model.named_modules()
            if isinstance(module, Linear4bit))


def is_packed(layer) -> bool:
    """Whether a `Linear4bit`'s weight is in bitsandbytes' CPU-packed (inference-only) layout."""
    state = getattr(layer.weight, "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def packed_layers(model) -> list[str]:
    """Names of the 4-bit layers of `model` whose weights are in the packed layout."""
    return [name for name, layer in _linear_4bit_layers(model) if is_packed(layer)]


def keep_trainable(model) -> int:
    """Keep every 4-bit weight of `model` in the plain layout, which trains correctly: stop
    bitsandbytes from packing them at the next eval-mode pass, and unpack any already packed.
    Returns how many layers had to be unpacked. A no-op off bitsandbytes' packing CPUs."""
    unpacked = 0
    for _name, layer in _linear_4bit_layers(model):
        # bitsandbytes reads this flag (set from the CPU's features when the layer was made)
        # in every forward before it packs; an older release without it never packs.
        layer.support_avx512bf16_for_cpu = False
        if is_packed(layer):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                layer.weight.data, layer.weight.quant_state)
            unpacked += 1
    return unpacked


class PackedWeightError(RuntimeError):
    """A 4-bit weight about to be trained through is in the packed, inference-only layout."""


def check_trainable(model) -> None:
    """Raise `PackedWeightError` if any 4-bit weight of `model` is packed: a backward through
    it would give wrong gradients without a word."""
    packed = packed_layers(model)
    if packed:
        raise PackedWeightError(
            f"{len(packed)} 4-bit layers (first: {packed[0]}) are in bitsandbytes' CPU-packed "
            "layout, which has no backward; refusing to train through them")
