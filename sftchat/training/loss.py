"""The training loss: logits at learned positions, without wasted work.

`LossFunction` runs the packed layout (see `batching.pack`) through the decoder stack and
applies the output head only at the positions whose next token is learned: on instruction
data that skips the vocabulary-sized projection (the biggest single matrix product of a small
model) for every prompt token. The result is the same summed cross-entropy as the plain
padded forward; `LossFunction.verify` checks that on the run's first micro-batch and falls
back to the padded layout for a model where it does not hold (an architecture that ignores
`position_ids` for masking, or scales its logits).

`learned_logits` is the shared core: the loss, the check that curated answers are
reproduced (`per_example_errors`) and the drift measure all read from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sftchat.prompts import IGNORE_INDEX, EncodedExample
from sftchat.training.batching import collate, pack

# Relative difference between packed and padded losses above which packing is not trusted.
PACKING_TOLERANCE = 2e-2


@dataclass
class LearnedLogits:
    logits: object    # [N, vocab] at every position whose next token is learned
    targets: object   # [N] those next tokens
    owners: object    # [N] index (in the micro-batch) of the example each position is in
    tokens: int       # real (non-padding) tokens processed
    real: object = None  # [rows, width] bool: which positions of the forward are real tokens


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
        self.verified = not self.packed   # the padded layout needs no check

    @property
    def layout(self) -> str:
        return "packed" if self.packed else "padded"

    def learned_logits(self, examples: Sequence[EncodedExample]) -> LearnedLogits:
        if self.packed:
            return self._packed(examples)
        return self._padded(examples)

    def loss_sum(self, examples: Sequence[EncodedExample]):
        out = self.learned_logits(examples)
        return masked_loss_sum_of(out), out.tokens

    def _padded(self, examples) -> LearnedLogits:
        import torch

        input_ids, attention, labels = collate(examples, self.pad_id, self.device)
        logits = self.model(input_ids=input_ids, attention_mask=attention).logits
        mask, targets = learned_targets(labels)
        owners = torch.arange(len(examples), device=labels.device)[:, None].expand_as(labels)
        return LearnedLogits(logits[mask], targets, owners[mask], int(attention.sum()),
                             attention.bool())

    def _packed(self, examples) -> LearnedLogits:
        batch = pack(examples, self.pad_id, self.device)
        hidden = self.decoder(input_ids=batch.input_ids, position_ids=batch.position_ids,
                              use_cache=False).last_hidden_state
        mask, targets = learned_targets(batch.labels)
        logits = self.head(hidden[mask].to(self.head.weight.dtype))
        # A position that predicts a learned token is in the same example as that token.
        return LearnedLogits(logits, targets, batch.owners[mask], batch.tokens,
                             batch.owners >= 0)

    def verify(self, examples: Sequence[EncodedExample]) -> bool:
        """Check packed == padded loss on `examples`; switch to padded if not. True if packed."""
        import torch

        if not self.packed:
            return False
        with torch.no_grad():
            packed = masked_loss_sum_of(self._packed(examples))
            padded = masked_loss_sum_of(self._padded(examples))
        difference = abs(float(packed) - float(padded)) / max(abs(float(padded)), 1e-6)
        self.packed = difference <= PACKING_TOLERANCE
        self.verified = True
        return self.packed


def masked_loss_sum_of(out: LearnedLogits):
    """Summed cross-entropy over the learned positions; the trainer divides it by the number
    of learned tokens in the whole optimizer step, so every response token weighs the same
    whatever batch it lands in (the torchtune/litgpt normalisation)."""
    import torch.nn.functional as F

    return F.cross_entropy(out.logits.float(), out.targets, reduction="sum")


def learned_targets(labels):
    """(mask over positions whose *next* token is learned, those next tokens)."""
    import torch

    next_labels = torch.full_like(labels, IGNORE_INDEX)
    next_labels[:, :-1] = labels[:, 1:]
    mask = next_labels != IGNORE_INDEX
    return mask, next_labels[mask]


def per_example_errors(logits, targets, owners, count: int):
    """For each of `count` examples: (tokens whose arg-max is not the target, the smallest
    margin between the target's logit and the best other one).

    `logits` [N, vocab], `targets` [N] and `owners` [N] are the learned positions. An example
    with 0 errors is reproduced exactly by greedy decoding (every response token and the end
    token are the model's first choice); the margin says how firmly.
    """
    import torch

    logits = logits.float()
    wrong = (logits.argmax(dim=-1) != targets).float()
    errors = torch.zeros(count, device=logits.device).index_add_(0, owners, wrong)
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], float("-inf")).amax(dim=-1)
    margins = torch.full((count,), float("inf"), device=logits.device)
    margins = margins.scatter_reduce(0, owners, target_logit - others, reduce="amin")
    return errors.long().cpu(), margins.cpu()
