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

Beside either, `quiet_weight` keeps the adapter quiet on general text, layer by layer: the
squared norm of what each LoRA layer adds to its layer's output (`B·A·x`, scaled), at every
position of the step's anchors (prompt and answer), over that layer's own mean squared output
on the anchors (measured once, before the first step, with the adapter off). A KL or rehearsal
loss only watches the last layer's distribution at answer positions, where a small drift on
average still flips facts the base knew only by a small margin; this holds every layer near
the base on text unlike the curated examples, which pushes the adapter into directions that
general text does not use (a soft form of the null-space constraint of model editing). On
SmolLM2 it cut the drift five-fold beside distillation alone (KL per token 0.060 ->
0.011) and kept as many facts or more (RESULTS.md §12). It is normalised per anchor
token over every rank, so ranks add up to one process.
"""

from __future__ import annotations

import contextlib
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
    """One step's anchors: the ones this rank computes, and the answer tokens and all tokens
    of them all (over every rank: the losses' normalisers)."""

    indices: list[int]
    learned: int
    tokens: int = 0


def lora_layers(model) -> list[tuple[object, str]]:
    """(LoRA layer, its active adapter's name) for every LoRA layer of `model` (PEFT's)."""
    layers = []
    for module in model.modules():
        lora_b = getattr(module, "lora_B", None)
        if lora_b is None or not hasattr(module, "base_layer"):
            continue
        layers += [(module, name) for name in getattr(module, "active_adapters", ())
                   if name in lora_b]
    return layers


class Regularizer:
    """The anchor loss of each step: `step_loss(forward, next_step())` -> (weighted loss to
    backward, the loss's value, tokens processed)."""

    def __init__(self, kind: str, anchors: Sequence[EncodedExample], weight: float,
                 quiet_weight: float = 0.0) -> None:
        self.kind = kind
        self.anchors = list(anchors)
        self.weight = weight
        self.quiet_weight = quiet_weight
        self.cursor = 0
        self.reference: list | None = None   # per anchor: (top-k ids, top-k log-probs)
        self.layers: list[tuple[object, str]] = []
        self.scales: list[float] = []        # per LoRA layer: mean squared base output

    def next_step(self, ranks: Ranks = SINGLE) -> AnchorStep:
        """The next `PER_STEP` anchors of the cycle (every rank advances alike), of which
        this rank computes its share (`ranks.deal`; alone: all of them)."""
        count = min(PER_STEP, len(self.anchors))
        indices = [(self.cursor + i) % len(self.anchors) for i in range(count)]
        self.cursor = (self.cursor + count) % len(self.anchors)
        return AnchorStep(ranks.deal(indices), sum(self.anchors[i].num_learned for i in indices),
                          sum(len(self.anchors[i].input_ids) for i in indices))

    def prepare(self, loss_function, model, batch_size: int = 8) -> None:
        """With the adapter off, once: for `distill`, the base's top-k distributions at every
        answer position; with `quiet_weight`, each LoRA layer's mean squared output."""
        import torch

        if self.quiet_weight:
            self._measure_scales(loss_function, model, batch_size)
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

    def _measure_scales(self, loss_function, model, batch_size: int) -> None:
        import torch

        self.layers = lora_layers(model)
        sums = [0.0] * len(self.layers)
        outputs: list = [None] * len(self.layers)

        def keep(index):
            def hook(module, inputs, output):
                outputs[index] = output.detach().float().pow(2).sum(-1)   # per position
            return hook

        handles = [module.base_layer.register_forward_hook(keep(index))
                   for index, (module, _) in enumerate(self.layers)]
        try:
            with torch.no_grad(), model.disable_adapter():
                for start in range(0, len(self.anchors), batch_size):
                    out = loss_function.learned_logits(self.anchors[start:start + batch_size])
                    for index, squares in enumerate(outputs):  # real tokens only
                        sums[index] += float(squares[out.real].sum())
        finally:
            for handle in handles:
                handle.remove()
        tokens = sum(len(anchor.input_ids) for anchor in self.anchors)
        self.scales = [max(total / tokens, 1e-12) for total in sums]

    @contextlib.contextmanager
    def _recording_additions(self):
        """During the forward inside, record what the adapter adds to each layer's output:
        yields a list of [rows, width] squared norms over the layer's scale (empty when the
        quiet penalty is off)."""
        additions: list = []
        if not self.quiet_weight or not self.layers:
            yield additions
            return

        def record(scale, scaling):
            def hook(module, inputs, output):
                additions.append((output.float() * scaling).pow(2).sum(-1) / scale)
            return hook

        handles = [module.lora_B[name].register_forward_hook(
                       record(scale, module.scaling[name]))
                   for (module, name), scale in zip(self.layers, self.scales)]
        try:
            yield additions
        finally:
            for handle in handles:
                handle.remove()

    def _quiet_penalty(self, additions: list, real, step: AnchorStep):
        """This rank's share of the step's quiet penalty: the recorded additions at real
        tokens (padding is not text), per layer and per anchor token over every rank."""
        penalty = sum(added[real].sum() for added in additions)
        return penalty / (len(self.layers) * max(step.tokens, 1))

    def step_loss(self, loss_function, step: AnchorStep | None = None):
        """The weighted anchor loss of `step` (default: the next one) on this rank's anchors,
        the quiet penalty included: (the tensor to backward, the anchor loss's unweighted
        value, tokens processed)."""
        import torch

        step = step or self.next_step()
        with self._recording_additions() as additions:
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
        total = self.weight * loss
        if additions:
            total = total + self.quiet_weight * self._quiet_penalty(additions, out.real, step)
        return total, float(loss.detach()), out.tokens
