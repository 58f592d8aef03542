"""Keeping what the model knew: a second loss on the base model's own answers.

Each optimizer step adds, beside the curated loss, a loss on a few of the base's greedy
answers to general prompts (`anchors.REHEARSAL_PROMPTS`), cycling through the pool
(`Anchors`), in two loss terms (`terms.LossTerm`) that read one forward of them:

`AnchorLoss`:

- `rehearsal`: cross-entropy on the base's answer tokens, as if they were curated;
- `distill`: the KL divergence from the base's next-token distribution to the adapter's, at
  every answer position, both restricted to the base's `TOP_K` most likely tokens and
  renormalised there. The base distributions are computed once, before the first step, with
  the adapter disabled (PEFT's `disable_adapter()`), so a step costs one forward and backward
  over the anchors, as rehearsal does — but each position constrains `TOP_K` probabilities
  instead of one token (read from the head's rows for those tokens only: `head.gather`).

Both are weighted by `rehearsal_weight` and normalised per answer token. Positions line up
between the reference and a step's forward because `learned_logits` is in example order.

Beside either, `QuietAdapter` (`quiet_weight`) keeps the adapter quiet on general text,
layer by layer: the squared norm of what each LoRA layer adds to its layer's output (`B·A·x`,
scaled), at every position of the step's anchors (prompt and answer), over that layer's own
mean squared output on the anchors (measured once, before the first step, in the same
adapter-off forward as distillation's references). Its hooks on the LoRA layers are held
until the step's backward is done: gradient checkpointing replays the forward there. A KL or
rehearsal loss only watches the last layer's distribution at answer positions, where a small
drift on average still flips facts the base knew only by a small margin; this holds every
layer near the base on text unlike the curated examples, which pushes the adapter into
directions that general text does not use (a soft form of the null-space constraint of model
editing). On SmolLM2 it cut the drift five-fold beside distillation alone (KL per token 0.060
-> 0.011) and kept as many facts or more (RESULTS.md §12). It is normalised per anchor token
over every rank, so ranks add up to one process.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Sequence

from sftchat.prompts import EncodedExample
from sftchat.training.distributed import SINGLE, Ranks
from sftchat.training.terms import LossTerm, Read, StepFigures

# Anchors per optimizer step. Eight, not four: with preferences the four-anchor steps kept a
# fact or two fewer (SmolLM2: 35/39 -> 36/39 in bfloat16, 36/40 -> 37/40 in float32) and the
# run took more steps (27 -> 23), so eight cost no time (RESULTS.md §18).
PER_STEP = 8
TOP_K = 64        # base-model probabilities kept per position for `distill`


@dataclass
class AnchorStep:
    """One step's anchors: the ones this rank computes, and the answer tokens and all tokens
    of them all (over every rank: the losses' normalisers)."""

    indices: list[int]
    learned: int
    tokens: int = 0


class Anchors:
    """The pool of the base's answers to general prompts, and the step cycle through it."""

    def __init__(self, examples: Sequence[EncodedExample]) -> None:
        self.examples = list(examples)
        self.cursor = 0

    def next_step(self, ranks: Ranks = SINGLE) -> AnchorStep:
        """The next `PER_STEP` anchors of the cycle (every rank advances alike), of which
        this rank computes its share (`ranks.deal`; alone: all of them)."""
        count = min(PER_STEP, len(self.examples))
        indices = [(self.cursor + i) % len(self.examples) for i in range(count)]
        self.cursor = (self.cursor + count) % len(self.examples)
        return AnchorStep(ranks.deal(indices),
                          sum(self.examples[i].num_learned for i in indices),
                          sum(len(self.examples[i].input_ids) for i in indices))

    def reads(self, step: AnchorStep, terms: Sequence[LossTerm]) -> list[Read]:
        """Each term's read of the step's anchor pass (its sequences: `step.indices`)."""
        return [Read(term, step.indices, term.normaliser(step)) for term in terms]


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


class AnchorLoss(LossTerm):
    """Distillation (`distill`) or rehearsal on the anchors, per answer token of the step."""

    def __init__(self, kind: str, anchors: Anchors, weight: float) -> None:
        self.kind = kind
        self.anchors = anchors
        self.weight = weight
        self.reference: list | None = None   # per anchor: (top-k ids, top-k log-probs)

    def normaliser(self, step: AnchorStep) -> float:
        return max(step.learned, 1)

    def reference_pool(self):
        if self.kind != "distill":
            return None
        self.reference = []
        return self.anchors.examples

    def take_reference(self, start: int, out) -> None:
        """The base's top-k distribution at every answer position, renormalised there."""
        import torch

        values, ids = out.top_k(TOP_K)
        count = int(out.owners.max()) + 1 if len(out.owners) else 0
        for index in range(count):
            rows = out.owners == index
            self.reference.append((ids[rows], torch.log_softmax(values[rows], dim=-1)))

    def unweighted(self, out, indices: Sequence[int], normaliser: float):
        """The anchor loss of `indices` (the forward's sequences, in order) per answer token."""
        import torch

        if self.kind == "rehearsal":
            return -out.token_scores().logp.sum() / normaliser
        ids = torch.cat([self.reference[i][0] for i in indices])
        base_logp = torch.cat([self.reference[i][1] for i in indices])
        # Both distributions renormalised over the base's top-k: the loss and its gradient
        # are exactly zero where the adapter agrees with the base (a full-vocabulary
        # student against a truncated teacher would instead sharpen every answer).
        tuned_logp = torch.log_softmax(out.gather(ids), dim=-1)
        return (base_logp.exp() * (base_logp - tuned_logp)).sum() / normaliser

    def loss(self, out, read: Read, figures: StepFigures):
        value = self.unweighted(out, read.rows, read.normaliser)
        figures.anchor_loss += float(value.detach())
        return self.weight * value


class QuietAdapter(LossTerm):
    """What each LoRA layer adds to its output on the anchors, over that layer's own mean
    squared output (adapter off), per anchor token of the step and per layer."""

    def __init__(self, anchors: Anchors, weight: float) -> None:
        self.anchors = anchors
        self.weight = weight
        self.layers: list[tuple[object, str]] = []
        self.scales: list[float] = []        # per LoRA layer: mean squared base output
        self._sums: list[float] = []
        self._outputs: list = []
        self._additions: list = []

    def normaliser(self, step: AnchorStep) -> float:
        return max(step.tokens, 1)

    def attach(self, model) -> None:
        self.layers = lora_layers(model)

    # -- the reference: each layer's mean squared output with the adapter off

    def reference_pool(self):
        self._sums = [0.0] * len(self.layers)
        self._outputs = [None] * len(self.layers)
        return self.anchors.examples

    @contextlib.contextmanager
    def reference_hooks(self):
        def keep(index):
            def hook(module, inputs, output):
                self._outputs[index] = output.detach().float().pow(2).sum(-1)  # per position
            return hook

        handles = [module.base_layer.register_forward_hook(keep(index))
                   for index, (module, _) in enumerate(self.layers)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def take_reference(self, start: int, out) -> None:
        for index, squares in enumerate(self._outputs):  # real tokens only
            self._sums[index] += float(squares[out.real].sum())

    def reference_done(self) -> None:
        tokens = sum(len(anchor.input_ids) for anchor in self.anchors.examples)
        self.scales = [max(total / tokens, 1e-12) for total in self._sums]

    # -- the penalty: hooks held over the forward and the backward (recomputation included)

    @contextlib.contextmanager
    def hooks(self):
        self._additions = []

        def record(scale, scaling):
            def hook(module, inputs, output):
                self._additions.append((output.float() * scaling).pow(2).sum(-1) / scale)
            return hook

        handles = [module.lora_B[name].register_forward_hook(
                       record(scale, module.scaling[name]))
                   for (module, name), scale in zip(self.layers, self.scales)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self._additions = []

    def penalty(self, out, normaliser: float):
        """The recorded additions of the forward at real tokens (padding is not text)."""
        total = sum(added[out.real].sum() for added in self._additions)
        return total / (len(self.layers) * normaliser)

    def loss(self, out, read: Read, figures: StepFigures):
        return self.weight * self.penalty(out, read.normaliser)

