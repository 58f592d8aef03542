"""The optimizer-step loop of one training run (on one rank of it, when there are several).

Every step is a few passes (`terms.Pass`, planned by `StepPlanner`): the step's curated
examples (this rank's share of them, `Ranks.share`) in micro-batches, each pair's rejected
answer beside its example; the step's anchors; the step's share of the bad answers with no
replacement. Each pass is one forward read by every loss term it feeds (`terms.LossTerm`:
the curated loss is the summed masked cross-entropy divided by the number of learned tokens in
the whole step over every rank) and one backward, gradients accumulated; then gradient
clipping, AdamW, and linear warm-up then cosine decay. One `step` event per step (rank 0).
The run stops early once every curated answer is reproduced exactly, by a margin, under greedy
decoding.

With several ranks, the backward passes go through `DataParallel` (DDP sums the gradients at
each rank's last backward of the step) and one all-reduce per step (`Ranks.sum`) gathers the
loss, the tokens, which examples were reproduced, and whether any rank was asked to stop.
"""

from __future__ import annotations

import math
import threading
import time

from sftchat.config import TrainingSettings
from sftchat.models.cpu_4bit import check_trainable
from sftchat.training.batching import count_learned
from sftchat.training.checkpoint_writer import Checkpointer, LoopState
from sftchat.training.distributed import SINGLE, DataParallel, Ranks
from sftchat.training.evaluation import replay
from sftchat.training.events import Emit, make_event
from sftchat.training.health import check_loss
from sftchat.training.loss import LossFunction
from sftchat.training.preference import PreferenceLoss
from sftchat.training.regularizer import Anchors
from sftchat.training.terms import (CuratedAnswers, LossTerm, Pass, Read, StepFigures,
                                    prepare_references, run_pass)

# Early stopping asks every target token to beat the runner-up by this many logits (nats),
# so that an answer learned exactly does not flip under cached decoding's arithmetic.
EARLY_STOP_MARGIN = 1.0


class StopRequested(Exception):
    """A rank was asked to stop (every rank raises it at the same step boundary)."""


def lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:  # `step` = optimizer steps taken so far
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def all_learned(loss_function, model, encoded, ranks: Ranks = SINGLE,
                preferences: PreferenceLoss | None = None) -> bool:
    """Whether greedy decoding reproduces every example, each by a safe margin, and every
    preference item is met (eval mode); each rank replays its share."""
    model.eval()
    try:
        report = replay(loss_function, ranks.deal(encoded))
        good = all(report.exact) and min(report.margins, default=math.inf) >= EARLY_STOP_MARGIN
        good = ranks.sum([0.0 if good else 1.0])[0] == 0
        if good and preferences is not None:
            good = preferences.all_met(loss_function, ranks)
    finally:
        model.train()
    check_trainable(model)  # the eval-mode pass must not have packed a 4-bit weight
    return good


def _stop_everywhere(stop: threading.Event, ranks: Ranks) -> None:
    """Raise `StopRequested` on every rank if any was asked to stop."""
    if ranks.sum([1.0 if stop.is_set() else 0.0])[0] > 0:
        raise StopRequested


class StepPlanner:
    """The passes of each step, and what the step's figures are made of."""

    def __init__(self, encoded, batch_size: int, ranks: Ranks, anchors: Anchors | None,
                 anchor_terms: list[LossTerm], preferences: PreferenceLoss | None) -> None:
        self.encoded = encoded
        self.lengths = [len(example.input_ids) for example in encoded]
        self.batch_size = batch_size
        self.ranks = ranks
        self.anchors = anchors
        self.anchor_terms = anchor_terms
        self.preferences = preferences
        self.curated = CuratedAnswers()

    @property
    def terms(self) -> list[LossTerm]:
        return [self.curated, *self.anchor_terms,
                *([self.preferences] if self.preferences is not None else [])]

    def plan(self, plan) -> tuple[list[Pass], StepFigures]:
        step_examples = [i for batch in plan.micro_batches for i in batch]
        learned = count_learned([self.encoded[i] for i in step_examples])
        riding = self.preferences.riding if self.preferences is not None else {}
        mine, loose = (self.preferences.next_loose(self.ranks)
                       if self.preferences is not None else ([], []))
        step_items = [item for example in step_examples for item in riding.get(example, [])]
        figures = StepFigures(step_examples, step_items + loose)
        items_in_step = max(1, len(figures.items))
        passes = []
        for batch in self.ranks.share(plan.micro_batches, self.lengths, self.batch_size):
            sequences = [self.encoded[i] for i in batch]
            rows = []
            for position, example in enumerate(batch):
                for item in riding.get(example, []):
                    rows.append((item, position, len(sequences)))
                    sequences.append(self.preferences.items[item].rejected)
            reads = [Read(self.curated, list(batch), learned)]
            if rows:
                reads.append(Read(self.preferences, rows, items_in_step))
            passes.append(Pass(sequences, reads))
        if self.anchors is not None and self.anchor_terms:
            step = self.anchors.next_step(self.ranks)
            if step.indices:
                passes.append(Pass([self.anchors.examples[i] for i in step.indices],
                                   self.anchors.reads(step, self.anchor_terms)))
        if mine:
            passes += [Pass(sequences, [read]) for sequences, read in
                       self.preferences.loose_reads(mine, items_in_step)]
        return passes, figures


def train_loop(model, encoded, plans, training: TrainingSettings, pad_id: int, device,
               emit: Emit, stop: threading.Event, anchors: Anchors | None = None,
               anchor_terms: list[LossTerm] = (), ranks: Ranks = SINGLE,
               checkpoints: Checkpointer | None = None,
               preferences: PreferenceLoss | None = None):
    """Run every planned step (or stop early): (metrics, the loss function).

    `anchors` and `anchor_terms` are the regularizer's (`regularizer`); `preferences` the
    preference term. `checkpoints` (rank 0's) writes checkpoints as it goes and, for a
    resumed run, restores the optimizer, the schedule, the loop's state and the random
    generators of the checkpoint's step: the steps after it are then those of the
    uninterrupted run.

    Raises `StopRequested` when `stop` is set (on any rank)."""
    import torch

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=training.lr, weight_decay=training.weight_decay)
    total = len(plans)
    warmup = min(total - 1, round(training.warmup_ratio * total)) if total > 1 else 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup))
    steps_per_epoch = sum(1 for plan in plans if plan.epoch == 0)
    vocabulary = getattr(getattr(model, "config", None), "vocab_size", None)
    chance = math.log(vocabulary) if vocabulary else None   # a uniform guess's loss
    resuming = checkpoints is not None and checkpoints.resumed is not None
    # The loss curve, and per example `learned_now`: reproduced exactly at its latest
    # training pass (read off the training logits for free; confirmed in eval mode before
    # stopping early). A resumed run's come back as its checkpoint left them.
    state = LoopState(learned_now=[False] * len(encoded),
                      met_now=[False] * len(preferences.items) if preferences else [])
    if resuming:
        state = checkpoints.restore(optimizer, scheduler, [name for name, _ in named])
    losses, epoch_losses, learned_now = state.losses, state.epoch_losses, state.learned_now
    met_now = state.met_now   # per preference item: met at its latest training pass
    stopped_early = False
    model.train()
    check_trainable(model)
    loss_function = LossFunction(model, pad_id, device)
    preparing = time.perf_counter()
    if resuming:  # the layout the run chose (`verify` compares two forwards: float noise)
        loss_function.packed = loss_function.packed and checkpoints.layout == "packed"
        loss_function.verified = True
    else:
        loss_function.verify([encoded[i] for i in plans[0].micro_batches[0]])
    planner = StepPlanner(encoded, training.batch_size, ranks, anchors, list(anchor_terms),
                          preferences)
    for term in planner.terms:
        term.attach(model)
    prepare_references(loss_function, model, planner.terms)
    # Where the run's time goes beside its steps (the `seconds` of its metrics).
    seconds = {"references": time.perf_counter() - preparing, "early_stop_checks": 0.0}
    if anchors is not None:
        anchors.cursor = state.anchor_cursor
    if preferences is not None:
        preferences.fit(steps_per_epoch)
        preferences.cursor = state.preference_cursor
    forward = DataParallel(loss_function, ranks)
    if checkpoints is not None:  # the generators after everything above drew from them
        checkpoints.begin(state, model, optimizer, scheduler, loss_function)
    started = time.perf_counter() - state.seconds
    _stop_everywhere(stop, ranks)  # a cancel during setup
    index = state.step
    for index, plan in enumerate(plans[state.step:], start=state.step + 1):
        if checkpoints is not None:
            checkpoints.at_boundary()
        passes, figures = planner.plan(plan)
        for number, step_pass in enumerate(passes, start=1):
            if stop.is_set() and not ranks.distributed:
                raise StopRequested  # alone, no need to wait for the step's end
            run_pass(forward, step_pass, figures, last=number == len(passes))
        if not passes:
            forward.join_empty()
        summed = ranks.sum(figures.flat() + [1.0 if stop.is_set() else 0.0])
        if summed.pop() > 0:
            raise StopRequested
        figures.unflat(summed)
        for example_index, code in figures.example_codes.items():
            if code:
                learned_now[example_index] = code == 1.0
        for item, code in figures.item_codes.items():
            if code:
                met_now[item] = code == 1.0
        step_loss = figures.loss
        state.tokens_seen += int(figures.tokens)
        anchor_loss = round(figures.anchor_loss, 6) if anchors is not None else None
        preference_loss = round(figures.preference_loss, 6) if preferences is not None \
            else None
        grad_norm = torch.nn.utils.clip_grad_norm_(params, training.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        epoch_losses.append(step_loss)
        state.step = index
        state.anchor_cursor = anchors.cursor if anchors is not None else 0
        state.preference_cursor = preferences.cursor if preferences is not None else 0
        elapsed = state.seconds = time.perf_counter() - started
        emit(make_event(
            "step", step=index, total_steps=total,
            epoch=round(plan.epoch + (index - plan.epoch * steps_per_epoch) / steps_per_epoch, 4),
            loss=round(step_loss, 6), anchor_loss=anchor_loss,
            preference_loss=preference_loss, lr=lr,
            grad_norm=round(float(grad_norm), 6), learned=sum(learned_now),
            examples=len(encoded), avoided=sum(met_now), rejected=len(met_now),
            tokens_per_s=round(state.tokens_seen / elapsed, 1),
            elapsed_s=round(elapsed, 3), eta_s=round(elapsed / index * (total - index), 1),
        ))
        check_loss(losses, training.lr, chance)  # a diverging run stops here, unpublished
        if index == total or plans[index].epoch != plan.epoch:
            emit(make_event("epoch", epoch=plan.epoch + 1,
                            loss=round(sum(epoch_losses) / len(epoch_losses), 6)))
            epoch_losses.clear()
            if training.early_stop and index < total and all(learned_now) and all(met_now):
                checking = time.perf_counter()
                stopped_early = all_learned(loss_function, model, encoded, ranks, preferences)
                seconds["early_stop_checks"] += time.perf_counter() - checking
                if stopped_early:
                    break
        if checkpoints is not None:
            checkpoints.after_step()
    model.eval()
    elapsed, tokens_seen = time.perf_counter() - started, state.tokens_seen
    peak_gpu = None
    if torch.device(device).type == "cuda":  # the process's peak, model load included
        peak_gpu = round(torch.cuda.max_memory_reserved(device) / 2**20)
    return {
        "steps": index, "planned_steps": total, "stopped_early": stopped_early,
        "warmup_steps": warmup, "final_loss": losses[-1],
        "loss_curve": [round(loss, 6) for loss in losses],
        "train_seconds": round(elapsed, 3), "tokens": tokens_seen,
        "tokens_per_s": round(tokens_seen / elapsed, 1) if elapsed else None,
        "batch_layout": loss_function.layout, "ranks": ranks.world_size,
        "peak_gpu_memory_mb": peak_gpu,
        "seconds": {**{name: round(value, 3) for name, value in seconds.items()},
                    "steps": round(elapsed - seconds["early_stop_checks"], 3)},
    }, loss_function
