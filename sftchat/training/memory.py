"""Will this run fit on the GPU beside what is already there (the chat's model included)?

The base weights are loaded first and measured; what training adds on top is estimated from
the model's config and the run's shape, before the first step, so that a run that cannot fit
is refused with one message (and what to change) instead of dying mid-run — or taking the
chat's memory with it:

- **LoRA**: r × (in + out) parameters per adapted linear layer, each with its fp32 weight,
  gradient and two AdamW moments (16 bytes);
- **activations** of the largest micro-batch, in the compute dtype: per token and layer the
  tensors a Llama-shaped block keeps for backward (norm outputs, q/k/v, attention output,
  the MLP's gate/up/act/down inputs) — with gradient checkpointing only each layer's input,
  plus one layer recomputed at a time. Two float32 extras: with a bfloat16 base, PEFT casts
  each LoRA layer's input to float32 (the LoRA weights' dtype), a copy its backward keeps;
  and on the anchors, the quiet penalty keeps each LoRA layer's scaled float32 output for
  the backward of its square (`regularizer.QuietAdapter`);
- **the head** at the learned positions only (the loss computes no others), chunk by chunk of
  positions (`head.CHUNK_ELEMENTS` float32 logits at a time, with their softmax) and, kept
  for the backward, the hidden states there and their gradient;
- a fixed allowance for the CUDA context and the allocator's fragmentation.

It is an estimate (documented formulas, not a dry run): it errs on the generous side, and
`train` still explains a CUDA out-of-memory error if one happens anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024 ** 3
# CUDA context, cuBLAS workspaces and allocator slack that a run needs beyond its tensors.
OVERHEAD_BYTES = 768 * 1024 ** 2
# Estimates of activation memory are known to be low by a margin (temporaries of fused ops).
SAFETY = 1.25


@dataclass(frozen=True)
class MemoryEstimate:
    lora_bytes: int         # LoRA weights, gradients and AdamW state
    activation_bytes: int   # activations kept for backward, largest micro-batch
    logit_bytes: int        # the head's chunk of fp32 logits; hidden states kept for it
    overhead_bytes: int

    @property
    def total(self) -> int:
        return int((self.lora_bytes + self.activation_bytes + self.logit_bytes) * SAFETY
                   + self.overhead_bytes)

    def describe(self) -> str:
        return (f"{self.total / GIB:.1f} GiB (LoRA and optimizer {self.lora_bytes / GIB:.2f}, "
                f"activations {self.activation_bytes / GIB:.2f}, logits "
                f"{self.logit_bytes / GIB:.2f}, CUDA overhead {self.overhead_bytes / GIB:.2f})")


def _dims(config) -> tuple[int, int, int, int, int]:
    hidden = config.hidden_size
    layers = config.num_hidden_layers
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return hidden, layers, intermediate, heads * head_dim, kv_heads * head_dim


def lora_parameters(config, rank: int) -> int:
    """LoRA parameters on every linear layer of a Llama-shaped block (q, k, v, o, gate, up,
    down), for all layers."""
    hidden, layers, intermediate, q_width, kv_width = _dims(config)
    shapes = [(hidden, q_width), (hidden, kv_width), (hidden, kv_width), (q_width, hidden),
              (hidden, intermediate), (hidden, intermediate), (intermediate, hidden)]
    return layers * sum(rank * (fan_in + fan_out) for fan_in, fan_out in shapes)


def estimate(config, rank: int, tokens: int, learned_tokens: int,
             gradient_checkpointing: bool, compute_bytes: int = 2,
             overhead_bytes: int = OVERHEAD_BYTES, quiet_tokens: int = 0) -> MemoryEstimate:
    """What a run adds once the base weights are loaded: `tokens` in its largest micro-batch,
    `learned_tokens` of them learned; `compute_bytes` per activation element (2 for bf16);
    `overhead_bytes` for the CUDA context and allocator (0 on a CPU); `quiet_tokens` in the
    largest pass that carries the quiet penalty (a step's anchors; 0 when it is off)."""
    hidden, layers, intermediate, q_width, kv_width = _dims(config)
    per_token_layer = (6 * hidden + q_width + 2 * kv_width + 4 * intermediate) * compute_bytes
    if compute_bytes < 4:   # float32 copies of the inputs of q, k, v, o, gate, up and down
        per_token_layer += (5 * hidden + q_width + intermediate) * 4
    # The quiet penalty's scaled float32 LoRA outputs (q, k, v, o, gate, up, down).
    quiet_per_token_layer = (q_width + 2 * kv_width + 2 * hidden + 2 * intermediate) * 4

    def kept(count: int, per_layer: int) -> int:
        if gradient_checkpointing:   # each layer's input, and one layer recomputed at a time
            return count * (layers * hidden * compute_bytes + per_layer)
        return count * layers * per_layer

    activations = max(kept(tokens, per_token_layer),
                      kept(quiet_tokens, per_token_layer + quiet_per_token_layer))
    return MemoryEstimate(
        lora_bytes=lora_parameters(config, rank) * 16,
        activation_bytes=activations,
        logit_bytes=_head_bytes(config.vocab_size, hidden, learned_tokens, compute_bytes),
        overhead_bytes=overhead_bytes,
    )


def _head_bytes(vocabulary: int, hidden: int, learned_tokens: int, compute_bytes: int) -> int:
    """One chunk of float32 logits and their softmax at a time (`head`), and for the
    backward the hidden states at the learned positions and their gradient."""
    from sftchat.training.head import CHUNK_ELEMENTS

    rows = min(learned_tokens, max(1, CHUNK_ELEMENTS // vocabulary))
    return rows * vocabulary * 4 * 2 + learned_tokens * hidden * compute_bytes * 2


def check_fits(needed: MemoryEstimate, free_bytes: int, batch_size: int,
               max_length: int) -> str | None:
    """None when the run fits in `free_bytes`; else the one message that says what to do."""
    if needed.total <= free_bytes:
        return None
    return (f"this run needs about {needed.describe()} of GPU memory beyond the loaded model, "
            f"and the GPU has {free_bytes / GIB:.1f} GiB free (the chat's model and any other "
            f"process included); lower --batch-size (now {batch_size}; raise --grad-accum to "
            f"keep the effective batch), lower --max-length (now {max_length}), use "
            "--gradient-checkpointing on, or train on GPUs the chat does not use "
            "(CUDA_VISIBLE_DEVICES=1 sftchat train, or with several: CUDA_VISIBLE_DEVICES=1,2 "
            "sftchat train --nproc 2)")


def gpu_memory_text(free_bytes: int, total_bytes: int) -> str:
    """The status line's GPU figure: memory in use (every process) of the total."""
    return f"GPU {(total_bytes - free_bytes) / GIB:.1f}/{total_bytes / GIB:.1f} GiB"


class MemoryUse:
    """What a run's training takes beyond what was in memory before it: on CUDA the caching
    allocator's peak allocated bytes, on a CPU the peak resident set (Linux: the kernel's
    high-water mark, reset at the start through /proc/self/clear_refs). `used_bytes` is None
    where neither can be read."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.before: int | None = None

    def start(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            return
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")   # resets VmHWM to the current resident set
            self.before = _status_bytes("VmRSS")
        except OSError:
            self.before = None

    def used_bytes(self) -> int | None:
        if self.before is None:
            return None
        if self.device == "cuda":
            import torch

            return torch.cuda.max_memory_allocated() - self.before
        peak = _status_bytes("VmHWM")
        return None if peak is None else peak - self.before


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None
