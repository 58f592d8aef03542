"""The training schedule: how many examples per step and how many steps, from the data.

A fixed schedule fails both ways: QLoRA's defaults (batch 4 × accumulation 4, 3 epochs) give
a dozen curated examples 3 optimizer steps, which teach them nothing, while a schedule sized
for a dozen examples wastes hours on ten thousand. So, unless the user fixes them:

- the effective batch (micro-batch × accumulation) is never larger than the dataset: a step
  over 12 examples is one micro-batch of 4 × 3, not 4 × 4 with a phantom micro-batch;
- `epochs = "auto"` (OpenAI's `n_epochs: auto` has the same idea) takes as many passes as it
  needs for at least `min_steps` optimizer steps, and no fewer than `BASE_EPOCHS`;
  the trainer stops early once every curated answer is reproduced (see `trainer`).

`plan_steps` then fixes every optimizer step of the run up front, so totals and ETA are exact.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from sftchat.config import AUTO, TrainingSettings

BASE_EPOCHS = 3        # passes over a dataset large enough to need no more
MAX_AUTO_EPOCHS = 200  # a bound for a dataset of one example (early stopping ends sooner)


@dataclass(frozen=True)
class Schedule:
    batch_size: int           # examples per micro-batch
    grad_accum: int           # micro-batches per optimizer step
    epochs: int               # passes over the dataset (max_steps may end the run earlier)
    max_steps: int | None

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum


@dataclass
class StepPlan:
    epoch: int                      # 0-based epoch this step belongs to
    micro_batches: list[list[int]]  # indices into the encoded examples


def fit_schedule(num_examples: int, training: TrainingSettings) -> Schedule:
    """The schedule for `num_examples` under `training` (see the module docstring)."""
    batch_size = max(1, min(training.batch_size, num_examples))
    micro_per_epoch = math.ceil(num_examples / batch_size)
    grad_accum = max(1, min(training.grad_accum, micro_per_epoch))
    if training.epochs == AUTO:
        steps_per_epoch = math.ceil(micro_per_epoch / grad_accum)
        epochs = min(MAX_AUTO_EPOCHS,
                     max(BASE_EPOCHS, math.ceil(training.min_steps / steps_per_epoch)))
    else:
        epochs = int(training.epochs)
    return Schedule(batch_size, grad_accum, epochs, training.max_steps)


def plan_steps(num_examples: int, batch_size: int, grad_accum: int, epochs: int,
               max_steps: int | None, seed: int) -> list[StepPlan]:
    """Every optimizer step of the run: each epoch's shuffled examples in micro-batches,
    `grad_accum` micro-batches a step."""
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


def plan_schedule(schedule: Schedule, num_examples: int, seed: int) -> list[StepPlan]:
    return plan_steps(num_examples, schedule.batch_size, schedule.grad_accum, schedule.epochs,
                      schedule.max_steps, seed)
