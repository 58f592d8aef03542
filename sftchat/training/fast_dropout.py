"""A faster LoRA dropout for CPU training.

`torch.nn.Dropout` draws its mask with `bernoulli_`, which on CPU costs about twice as much
as drawing uniforms with `torch.rand` and comparing; with LoRA on every linear layer that
draw happens seven times per layer per step and was about a fifth of a CPU training step
(measured with torch.profiler on a 17M-parameter Llama, see benchmarks/RESULTS.md). The
mask has the same distribution (keep with probability 1 - p, scale kept values by 1/(1-p)).
"""

from __future__ import annotations

import torch


class FastDropout(torch.nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model) -> int:
    """Swap every LoRA `nn.Dropout` in `model` for `FastDropout`; return how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in list(dropouts.items()):
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0:
                dropouts[name] = FastDropout(dropout.p)
                swapped += 1
    return swapped
