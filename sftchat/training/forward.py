"""The training forward pass: masked loss for one micro-batch, without wasted work.

`LossFunction` runs the packed layout (see `batching.pack`) through the decoder stack and
applies the output head only at the positions whose next token is learned: on instruction
data that skips the vocabulary-sized projection (the biggest single matrix product of a small
model) for every prompt token. The result is the same summed cross-entropy as the plain
padded forward; `LossFunction.verify` checks that on the run's first micro-batch and falls
back to the padded layout for a model where it does not hold (an architecture that ignores
`position_ids` for masking, or scales its logits).
"""

from __future__ import annotations

from typing import Sequence

from sftchat.prompts import EncodedExample
from sftchat.training.batching import collate, learned_targets, masked_loss_sum, pack

# Relative difference between packed and padded losses above which packing is not trusted.
PACKING_TOLERANCE = 2e-2


class LossFunction:
    """`loss_sum(examples)` -> (summed masked cross-entropy, real tokens processed)."""

    def __init__(self, model, pad_id: int, device) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = device
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = base.config
        self.decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        self.head = base.get_output_embeddings()
        scaled = any(getattr(config, name, None) for name in
                     ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"))
        self.packed = self.decoder is not None and self.head is not None and not scaled

    @property
    def layout(self) -> str:
        return "packed" if self.packed else "padded"

    def loss_sum(self, examples: Sequence[EncodedExample]):
        if self.packed:
            return self._packed(examples)
        return self._padded(examples)

    def _padded(self, examples):
        input_ids, attention, labels = collate(examples, self.pad_id, self.device)
        logits = self.model(input_ids=input_ids, attention_mask=attention).logits
        return masked_loss_sum(logits, labels), int(attention.sum())

    def _packed(self, examples):
        import torch.nn.functional as F

        batch = pack(examples, self.pad_id, self.device)
        hidden = self.decoder(input_ids=batch.input_ids, position_ids=batch.position_ids,
                              use_cache=False).last_hidden_state
        mask, targets = learned_targets(batch.labels)
        logits = self.head(hidden[mask].to(self.head.weight.dtype))
        return F.cross_entropy(logits.float(), targets, reduction="sum"), batch.tokens

    def verify(self, examples: Sequence[EncodedExample]) -> bool:
        """Check packed == padded loss on `examples`; switch to padded if not. True if packed."""
        import torch

        if not self.packed:
            return False
        with torch.no_grad():
            packed, _ = self._packed(examples)
            padded, _ = self._padded(examples)
        difference = abs(float(packed) - float(padded)) / max(abs(float(padded)), 1e-6)
        self.packed = difference <= PACKING_TOLERANCE
        return self.packed
