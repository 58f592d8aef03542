"""The training loss: logits at learned positions, without wasted work.

`LossFunction` runs the packed layout (see `batching.pack`) through the decoder stack and
applies the output head only at the positions whose next token is learned: on instruction
data that skips the vocabulary-sized projection (the biggest single matrix product of a small
model) for every prompt token. The result is the same summed cross-entropy as the plain
padded forward; `LossFunction.verify` checks that on the run's first micro-batch and falls
back to the padded layout for a model where it does not hold (an architecture that ignores
`position_ids` for masking, or scales its logits).

`learned_logits` is the shared core: every loss term, the check that curated answers are
reproduced (`per_example_errors`) and the drift measure read from it, through `head`'s
chunked reads (no full-batch float32 logits).
"""

from __future__ import annotations

from typing import Sequence

from sftchat.prompts import IGNORE_INDEX, EncodedExample
from sftchat.training.batching import collate, pack
from sftchat.training.head import LearnedLogits

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
        # The head is a plain linear layer: it can be applied at the learned positions alone.
        self.plain_head = self.decoder is not None and self.head is not None and not scaled
        self.packed = self.plain_head
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
        mask, targets = learned_targets(labels)
        owners = torch.arange(len(examples), device=labels.device)[:, None].expand_as(labels)
        # Row-major over [example, position]: already in example order.
        common = (targets, owners[mask], int(attention.sum()), attention.bool())
        if self.plain_head:  # the head at learned positions only, as the packed layout
            hidden = self.decoder(input_ids=input_ids, attention_mask=attention,
                                  use_cache=False).last_hidden_state
            return LearnedLogits(*common, hidden=hidden[mask], head=self.head)
        logits = self.model(input_ids=input_ids, attention_mask=attention).logits
        return LearnedLogits(*common, logits_made=logits[mask])

    def _packed(self, examples) -> LearnedLogits:
        batch = pack(examples, self.pad_id, self.device)
        hidden = self.decoder(input_ids=batch.input_ids, position_ids=batch.position_ids,
                              use_cache=False).last_hidden_state
        import torch

        mask, targets = learned_targets(batch.labels)
        # A position that predicts a learned token is in the same example as that token; a
        # row holds several examples, so put them in example order (stable: positions too).
        owners = batch.owners[mask]
        order = torch.argsort(owners, stable=True)
        return LearnedLogits(targets[order], owners[order], batch.tokens, batch.owners >= 0,
                             hidden=hidden[mask][order], head=self.head)

    def verify(self, examples: Sequence[EncodedExample]) -> bool:
        """Check the packed loss on `examples` equals the model's own forward's; switch to the
        padded layout if not. True if packed."""
        import torch

        if not self.packed:
            return False
        with torch.no_grad():
            packed = masked_loss_sum_of(self._packed(examples))
            padded = sum(self._model_loss(example) for example in examples)
        difference = abs(float(packed) - float(padded)) / max(abs(float(padded)), 1e-6)
        self.packed = difference <= PACKING_TOLERANCE
        self.verified = True
        return self.packed

    def _model_loss(self, example: EncodedExample):
        """The summed cross-entropy the model's own forward gives `example` (alone, so no
        padding), its logits made at the learned positions only (`logits_to_keep`)."""
        import torch
        import torch.nn.functional as F

        labels = torch.tensor([example.labels], device=self.device)
        mask, targets = learned_targets(labels)
        positions = mask[0].nonzero().squeeze(1)
        input_ids = torch.tensor([example.input_ids], device=self.device)
        try:
            logits = self.model(input_ids=input_ids, logits_to_keep=positions).logits[0]
        except TypeError:   # a model without `logits_to_keep`
            logits = self.model(input_ids=input_ids).logits[0, positions]
        return F.cross_entropy(logits.float(), targets, reduction="sum")


def masked_loss_sum_of(out: LearnedLogits):
    """Summed cross-entropy over the learned positions; the trainer divides it by the number
    of learned tokens in the whole optimizer step, so every response token weighs the same
    whatever batch it lands in (the torchtune/litgpt normalisation)."""
    return -out.token_scores().logp.sum()


def learned_targets(labels):
    """(mask over positions whose *next* token is learned, those next tokens)."""
    import torch

    next_labels = torch.full_like(labels, IGNORE_INDEX)
    next_labels[:, :-1] = labels[:, 1:]
    mask = next_labels != IGNORE_INDEX
    return mask, next_labels[mask]


def per_example_errors(out: LearnedLogits, count: int):
    """For each of the first `count` sequences of `out`: (tokens whose arg-max is not the
    target, the smallest margin between the target's logit and the best other one), on the
    host.

    An example with 0 errors is reproduced exactly by greedy decoding (every response token
    and the end token are the model's first choice); the margin says how firmly.
    """
    import torch

    scores = out.token_scores()
    mine = out.owners < count    # the forward's first `count` sequences (others: ignored)
    owners = out.owners[mine]
    errors = torch.zeros(count, device=owners.device).index_add_(
        0, owners, scores.wrong[mine].float())
    margins = torch.full((count,), float("inf"), device=owners.device)
    margins = margins.scatter_reduce(0, owners, scores.margin.detach()[mine], reduce="amin")
    return errors.long().cpu(), margins.cpu()
