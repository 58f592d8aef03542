"""Micro-batch layouts for instruction fine-tuning (the loss that reads them is `loss.py`).

- `collate` right-pads a micro-batch: padding gets label `IGNORE_INDEX` and attention 0.
  The reference layout, and the fallback for models that cannot take packed rows.
- `pack` is the fast layout: padding-free packing. The micro-batch's sequences are laid end
  to end in a few rows (first-fit decreasing), each restarting its `position_ids` at 0;
  with no attention mask, transformers builds a block-diagonal causal mask from the position
  ids, so no sequence attends to another and no compute goes to padding (TRL's padded
  batches on Alpaca-like data are about half padding).
- `count_learned` is the number of tokens a batch learns (the loss normaliser).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sftchat.prompts import IGNORE_INDEX, EncodedExample


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
    owners: object         # [rows, width] index of the example each token belongs to (-1: pad)
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
    owners = torch.full((len(rows), width), -1, dtype=torch.long)
    for row_index, row in enumerate(rows):
        start = 0
        for index in row:
            example, length = examples[index], lengths[index]
            input_ids[row_index, start:start + length] = torch.tensor(example.input_ids)
            labels[row_index, start:start + length] = torch.tensor(example.labels)
            positions[row_index, start:start + length] = torch.arange(length)
            owners[row_index, start:start + length] = index
            start += length
        # Padding forms its own segment (positions from 0), so no real token attends to it.
        positions[row_index, start:] = torch.arange(width - start)
    return PackedBatch(input_ids.to(device), positions.to(device), labels.to(device),
                       owners.to(device), tokens=sum(lengths))


def count_learned(examples: Sequence[EncodedExample]) -> int:
    return sum(example.num_learned for example in examples)
