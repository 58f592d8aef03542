"""The terms of the training loss, and the passes that feed them.

A step's loss is a sum of terms, each normalised over the whole step (every rank):

- `CuratedAnswers` (here): cross-entropy on the curated answers and their end token;
- `regularizer.AnchorLoss`: distillation (or rehearsal) on the base's own answers to general
  prompts; `regularizer.QuietAdapter`: what the adapter adds to each layer's output there;
- `preference.PreferenceLoss`: DPO on pairs, the KTO-style term on bad answers.

Each term says what it needs prepared (`reference_pool`: the sequences whose adapter-off
figures it needs), reads its loss off shared forwards (`loss`), and owns any hooks it needs
(`hooks`), which the loop holds from the forward to the end of the backward: gradient
checkpointing recomputes each layer's forward inside the backward, and the recomputation must
run the operations the forward ran (a hook removed after the forward made torch's
`CheckpointError`).

A step is a few `Pass`es: one forward over some sequences, whose output every term reading
them turns into its loss (`Read`), one backward of their sum. A pair's chosen answer is the
curated example itself, so its rejected answer rides in its example's pass and DPO reads the
chosen log-probability from the forward the curated loss already made; the anchors' forward
feeds both regularizer terms.

Before the first step `prepare_references` makes one adapter-off pass over every pool the
terms asked for, each sequence once, every term of a pool reading the same forward.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Sequence

from sftchat.prompts import EncodedExample

REFERENCE_BATCH = 8


@dataclass
class StepFigures:
    """What a step's terms measured, summed over the ranks (`flat`/`unflat`): the curated
    loss, tokens processed, the anchor and preference losses, and per example and per
    preference item of the step 1 = reproduced (met), 2 = not, 0 = not run on this rank."""

    examples: list[int]
    items: list[int] = field(default_factory=list)
    loss: float = 0.0
    tokens: float = 0.0
    anchor_loss: float = 0.0
    preference_loss: float = 0.0
    example_codes: dict = field(default_factory=dict)
    item_codes: dict = field(default_factory=dict)

    def flat(self) -> list[float]:
        return ([self.loss, self.tokens, self.anchor_loss, self.preference_loss]
                + [self.example_codes.get(i, 0.0) for i in self.examples]
                + [self.item_codes.get(i, 0.0) for i in self.items])

    def unflat(self, values: Sequence[float]) -> None:
        self.loss, self.tokens, self.anchor_loss, self.preference_loss = values[:4]
        codes = values[4:]
        self.example_codes = dict(zip(self.examples, codes[:len(self.examples)]))
        self.item_codes = dict(zip(self.items, codes[len(self.examples):]))


class LossTerm:
    """One term of the loss (see the module docstring). Subclasses override what they use."""

    def reference_pool(self) -> list[EncodedExample] | None:
        """The sequences whose adapter-off figures this term needs (None: none)."""
        return None

    def reference_hooks(self):
        """Held over each reference forward of this term's pool."""
        return contextlib.nullcontext()

    def take_reference(self, start: int, out) -> None:
        """Read the references of pool sequences `start`… off `out` (adapter off)."""

    def reference_done(self) -> None:
        """The whole pool has been read."""

    def attach(self, model) -> None:
        """The model being trained, LoRA attached, before the references are made."""

    def hooks(self):
        """Held from the forward to the end of the backward of every pass this term reads."""
        return contextlib.nullcontext()

    def loss(self, out, read: "Read", figures: StepFigures):
        """The weighted loss tensor of `read`'s sequences of `out`; adds to `figures`."""
        raise NotImplementedError


@dataclass
class Read:
    """A term's share of a pass: `rows` says which of the pass's sequences are its and what
    they are (each term its own shape)."""

    term: LossTerm
    rows: list
    normaliser: float = 1.0   # what the term divides by over the whole step (every rank)


@dataclass
class Pass:
    sequences: list[EncodedExample]
    reads: list[Read]

    @property
    def terms(self) -> list[LossTerm]:
        return list(dict.fromkeys(read.term for read in self.reads))


@contextlib.contextmanager
def pass_loss(forward, step_pass: Pass, figures: StepFigures):
    """Forward `step_pass` and yield the sum of its terms' losses, every term's hooks held
    until the block ends: run the backward inside it (gradient checkpointing recomputes the
    forward there)."""
    with contextlib.ExitStack() as hooks:
        for term in step_pass.terms:
            hooks.enter_context(term.hooks())
        out = forward.learned_logits(step_pass.sequences)
        figures.tokens += out.tokens
        yield sum(read.term.loss(out, read, figures) for read in step_pass.reads)


def run_pass(forward, step_pass: Pass, figures: StepFigures, last: bool) -> None:
    """One pass of a step: forward, loss, backward (the step's last communicates)."""
    with forward.backward_pass(last=last), pass_loss(forward, step_pass, figures) as total:
        total.backward()


def prepare_references(loss_function, model, terms: Sequence[LossTerm],
                       batch_size: int = REFERENCE_BATCH) -> None:
    """One adapter-off pass: each pool asked for once, every term sharing it reading the
    same forward."""
    import torch

    pools: dict[int, tuple[list, list[LossTerm]]] = {}
    for term in terms:
        pool = term.reference_pool()
        if pool:
            pools.setdefault(id(pool), (pool, []))[1].append(term)
    if not pools:
        return
    with torch.no_grad(), model.disable_adapter():
        for pool, readers in pools.values():
            for start in range(0, len(pool), batch_size):
                with contextlib.ExitStack() as hooks:
                    for term in readers:
                        hooks.enter_context(term.reference_hooks())
                    out = loss_function.learned_logits(pool[start:start + batch_size])
                    for term in readers:
                        term.take_reference(start, out)
            for term in readers:
                term.reference_done()


def sequence_positions(out, count: int):
    """(each learned position's index within its sequence, each position's sequence size),
    for `out`'s `count` sequences (positions are in example order)."""
    import torch

    owners = out.owners
    sizes = torch.bincount(owners, minlength=count)
    starts = torch.cumsum(sizes, 0) - sizes
    position = torch.arange(len(owners), device=owners.device) - starts[owners]
    return position, sizes[owners]


class CuratedAnswers(LossTerm):
    """The curated examples' masked cross-entropy over the step's learned tokens (every rank);
    records which examples the training logits reproduce exactly (greedy, teacher-forced)."""

    def loss(self, out, read: Read, figures: StepFigures):
        """`read.rows`: the example indices of the pass's first sequences."""
        from sftchat.training.loss import per_example_errors

        count = len(read.rows)
        logp = out.token_scores().logp
        total = -(logp * (out.owners < count)).sum() / read.normaliser
        figures.loss += float(total.detach())
        errors, _ = per_example_errors(out, count)
        for example, wrong in zip(read.rows, errors.tolist()):
            figures.example_codes[example] = 1.0 if wrong == 0 else 2.0
        return total
