"""The schedule fits the data: effective batch within the dataset, enough steps when small."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sftchat.config import TrainingSettings
from sftchat.training.schedule import BASE_EPOCHS, fit_schedule, plan_schedule


def test_a_dozen_examples_get_full_batch_steps_and_enough_of_them():
    training = TrainingSettings()  # batch 4 × accumulation 4, epochs auto
    schedule = fit_schedule(12, training)
    # 12 examples: micro-batches of 4, 3 of them a step (not 4 with a phantom one).
    assert (schedule.batch_size, schedule.grad_accum) == (4, 3)
    plans = plan_schedule(schedule, 12, training.seed)
    assert len(plans) >= training.min_steps
    assert all(sorted(i for batch in plan.micro_batches for i in batch) == list(range(12))
               for plan in plans)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_effective_batch_never_exceeds_a_tiny_dataset(count):
    schedule = fit_schedule(count, TrainingSettings())
    assert schedule.batch_size <= count
    steps = plan_schedule(schedule, count, 0)
    assert all(sum(len(b) for b in plan.micro_batches) == count for plan in steps)


def test_large_datasets_keep_the_base_epochs():
    training = TrainingSettings()
    schedule = fit_schedule(10_000, training)
    assert (schedule.batch_size, schedule.grad_accum, schedule.epochs) == (4, 4, BASE_EPOCHS)


def test_explicit_epochs_and_max_steps_win():
    training = replace(TrainingSettings(), epochs=2)
    assert fit_schedule(12, training).epochs == 2
    assert len(plan_schedule(fit_schedule(12, training), 12, 0)) == 2
    capped = replace(TrainingSettings(), max_steps=5)
    assert len(plan_schedule(fit_schedule(12, capped), 12, 0)) == 5
