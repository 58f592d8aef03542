"""Batches and loss for instruction fine-tuning.

- `plan_steps` splits the shuffled examples of each epoch into optimizer steps, each a list
  of micro-batches (gradient accumulation).
- `collate` right-pads a micro-batch: padding gets label `IGNORE_INDEX` and attention 0.
  The reference layout, and the fallback for models that cannot take packed rows.
- `pack` is the fast layout: padding-free packing. The micro-batch's sequences are laid end
  to end in a few rows (first-fit decreasing), each restarting its `position_ids` at 0;
  with no attention mask, transformers builds a block-diagonal causal mask from the position
  ids, so no sequence attends to another and no compute goes to padding (TRL's padded
  batches on Alpaca-like data are about half padding).
- `masked_loss_sum` is the summed cross-entropy over learned tokens only; the trainer divides
  by the number of learned tokens in the whole optimizer step, so every response token weighs
  the same whatever batch it lands in (the torchtune/litgpt normalisation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from sftchat.prompts import IGNORE_INDEX, EncodedExample


@dataclass
class StepPlan:
    epoch: int                      # 0-based epoch this step belongs to
    micro_batches: list[list[int]]  # indices into the encoded examples


def steps_per_epoch(num_examples: int, batch_size: int, grad_accum: int) -> int:
    micro = -(-num_examples // batch_size)
    return -(-micro // grad_accum)


def plan_steps(num_examples: int, batch_size: int, grad_accum: int, epochs: int,
               max_steps: int | None, seed: int) -> list[StepPlan]:
    """Every optimizer step of the run, fixed up front (so totals and ETA are exact)."""
    rng = random.Random(seed)
    plans: list[StepPlan] = []
    epoch = 0
    while True:
        order = list(range(num_examples))
        rng.shuffle(order)
        micro = [order[i:i + batch_size] for i in range(0, num_examples, batch_size)]
        for start in range(0, len(micro), grad_accum):
            plans.append(StepPlan(epoch, micro[start:start + grad_accum]))
            if max_steps is not None and len(plans) >= max_steps:
                return plans
        epoch += 1
        if max_steps is None and epoch >= epochs:
            return plans


def collate(examples: Sequence[EncodedExample], pad_id: int, device):
    """Right-padded (input_ids, attention_mask, labels) tensors for one micro-batch."""
    import torch

    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        input_ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        attention[row, :length] = 1
    return input_ids.to(device), attention.to(device), labels.to(device)


# Packed rows hold at least this many tokens (if the sequences allow): long rows make big,
# efficient matrix products, while attention cost grows with the row's length squared.
MIN_ROW_TOKENS = 256


@dataclass
class PackedBatch:
    input_ids: object      # [rows, width] token ids, padding at the end of each row
    position_ids: object   # [rows, width] restarting at 0 for every sequence (and the padding)
    labels: object         # [rows, width] IGNORE_INDEX on prompts and padding
    tokens: int            # real (non-padding) tokens in the batch


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices of `lengths` grouped into rows of at most `capacity`."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows


def pack(examples: Sequence[EncodedExample], pad_id: int, device) -> PackedBatch:
    """Padding-free rows for one micro-batch (see the module docstring)."""
    import torch

    lengths = [len(example.input_ids) for example in examples]
    capacity = max(max(lengths), MIN_ROW_TOKENS)
    rows = pack_rows(lengths, capacity)
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for row_index, row in enumerate(rows):
        start = 0
        for index in row:
            example, length = examples[index], lengths[index]
            input_ids[row_index, start:start + length] = torch.tensor(example.input_ids)
            labels[row_index, start:start + length] = torch.tensor(example.labels)
            positions[row_index, start:start + length] = torch.arange(length)
            start += length
        # Padding forms its own segment (positions from 0), so no real token attends to it.
        positions[row_index, start:] = torch.arange(width - start)
    return PackedBatch(input_ids.to(device), positions.to(device), labels.to(device),
                       tokens=sum(lengths))


def count_learned(examples: Sequence[EncodedExample]) -> int:
    return sum(example.num_learned for example in examples)


def masked_loss_sum(logits, labels):
    """Sum of next-token cross-entropy over positions whose target is not IGNORE_INDEX."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX, reduction="sum",
    )


def learned_targets(labels):
    """(mask over positions whose *next* token is learned, those next tokens)."""
    import torch

    next_labels = torch.full_like(labels, IGNORE_INDEX)
    next_labels[:, :-1] = labels[:, 1:]
    mask = next_labels != IGNORE_INDEX
    return mask, next_labels[mask]
