"""Keeping what the model knew: a second loss on the base model's own answers.

Each optimizer step adds, beside the curated loss, a loss on a few of the base's greedy
answers to general prompts (`anchors.REHEARSAL_PROMPTS`), cycling through the pool:

- `rehearsal`: cross-entropy on the base's answer tokens, as if they were curated;
- `distill`: the KL divergence from the base's next-token distribution to the adapter's, at
  every answer position, both restricted to the base's `TOP_K` most likely tokens and
  renormalised there. The base
  distributions are computed once, before the first step, with the adapter disabled (PEFT's
  `disable_adapter()`), so a step costs one forward and backward over the anchors, as
  rehearsal does — but each position constrains `TOP_K` probabilities instead of one token.

Both are weighted by `rehearsal_weight` and normalised per answer token. Positions line up
between the reference and a step's forward because `learned_logits` is put in example order
(stable sort by owner: within an example, positions keep their order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from sftchat.prompts import EncodedExample
from sftchat.training.distributed import SINGLE, Ranks
from sftchat.training.loss import LearnedLogits, masked_loss_sum_of

PER_STEP = 4      # anchors per optimizer step
TOP_K = 64        # base-model probabilities kept per position for `distill`


def in_example_order(out: LearnedLogits):
    """(logits, targets, owners) of `out`, grouped by example, positions in order."""
    import torch

    order = torch.argsort(out.owners, stable=True)
    return out.logits[order], out.targets[order], out.owners[order]


@dataclass
class AnchorStep:
    """One step's anchors: the ones this rank computes, and the answer tokens of them all
    (over every rank: the loss's normaliser)."""

    indices: list[int]
    learned: int


class Regularizer:
    """The anchor loss of each step: `step_loss(forward, next_step())` -> (weighted loss to
    backward, the loss's value, tokens processed)."""

    def __init__(self, kind: str, anchors: Sequence[EncodedExample], weight: float) -> None:
        self.kind = kind
        self.anchors = list(anchors)
        self.weight = weight
        self.cursor = 0
        self.reference: list | None = None   # per anchor: (top-k ids, top-k log-probs)

    def next_step(self, ranks: Ranks = SINGLE) -> AnchorStep:
        """The next `PER_STEP` anchors of the cycle (every rank advances alike), of which
        this rank computes its share (`ranks.deal`; alone: all of them)."""
        count = min(PER_STEP, len(self.anchors))
        indices = [(self.cursor + i) % len(self.anchors) for i in range(count)]
        self.cursor = (self.cursor + count) % len(self.anchors)
        return AnchorStep(ranks.deal(indices), sum(self.anchors[i].num_learned for i in indices))

    def prepare(self, loss_function, model, batch_size: int = 8) -> None:
        """For `distill`: the base's top-k distributions at every answer position."""
        import torch

        if self.kind != "distill":
            return
        self.reference = []
        with torch.no_grad(), model.disable_adapter():
            for start in range(0, len(self.anchors), batch_size):
                chunk = self.anchors[start:start + batch_size]
                logits, _, owners = in_example_order(loss_function.learned_logits(chunk))
                top = torch.log_softmax(logits.float(), dim=-1).topk(TOP_K, dim=-1)
                for index in range(len(chunk)):
                    rows = owners == index
                    logp = torch.log_softmax(top.values[rows], dim=-1)  # renormalised
                    self.reference.append((top.indices[rows], logp))

    def step_loss(self, loss_function, step: AnchorStep | None = None):
        """The weighted anchor loss of `step` (default: the next one) on this rank's anchors:
        (the tensor to backward, its unweighted value, tokens processed)."""
        import torch

        step = step or self.next_step()
        out = loss_function.learned_logits([self.anchors[i] for i in step.indices])
        if self.kind == "rehearsal":
            loss = masked_loss_sum_of(out) / step.learned
        else:
            logits, _, _ = in_example_order(out)
            ids = torch.cat([self.reference[i][0] for i in step.indices])
            base_logp = torch.cat([self.reference[i][1] for i in step.indices])
            # Both distributions renormalised over the base's top-k: the loss and its gradient
            # are exactly zero where the adapter agrees with the base (a full-vocabulary
            # student against a truncated teacher would instead sharpen every answer).
            tuned_logp = torch.log_softmax(logits.float().gather(1, ids), dim=-1)
            loss = (base_logp.exp() * (base_logp - tuned_logp)).sum() / step.learned
        return self.weight * loss, float(loss.detach()), out.tokens
