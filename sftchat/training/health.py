"""Is this run healthy? A run that went wrong fails instead of publishing a broken model.

Two symptoms, each checked where it can first be seen:

- `check_loss`, after every optimizer step: the loss is not a number, or it has climbed far
  above where the run started (its recent average over `LOSS_WINDOW` steps more than
  `LOSS_CLIMB` times the average of the first ones), or it sits at chance — the log of the
  vocabulary size, what a model that predicts every token alike scores — for `LOSS_WINDOW`
  steps (a collapsed model: a learning rate far too high does that to a small model whose
  loss started near chance). Gradients that were silently wrong climbed (issue 18: 3.84 at
  the start, 7.65 at step 24). It stops the run at once: the remaining steps could only
  waste the user's time.
- `check_drift`, once trained: the base model's own answers to held-out prompts became
  more than `max_drift` times less likely under the adapter (the perplexity ratio of
  `evaluation.measure_drift`; the `max_drift` setting, 10 by default). A healthy run on a real
  model measures ×1.0–1.1; the broken one ×176. Curated answers can come back exactly from a
  model that lost everything else. (The built-in model's random answers are nothing to keep:
  its preset turns this check off.)

Either raises `TrainingDiverged`: one sentence saying what went wrong and what to try, and the
trainer publishes nothing.
"""

from __future__ import annotations

import math
from typing import Sequence

from sftchat.errors import SftchatError

LOSS_WINDOW = 3      # steps averaged at the start and at the end of the curve
LOSS_CLIMB = 1.5     # "far above where it started": half as high again as at the start
AT_CHANCE = 0.005    # relative distance from chance (log vocabulary size) that counts as at it


class TrainingDiverged(SftchatError, RuntimeError):
    """The run went wrong (loss climbing or not a number, or the model's other answers
    destroyed); nothing is published."""


def _lr_hint(lr: float) -> str:
    return f"try a lower --lr (this run: {lr:g}; e.g. {lr / 4:g})"


def check_loss(curve: Sequence[float], lr: float, chance: float | None = None) -> None:
    """Raise `TrainingDiverged` if the last loss of `curve` (one value per step so far) is
    not a number, if the recent losses have climbed far above the first ones, or if they have
    all sat at `chance` (the log of the vocabulary size; None: not checked)."""
    if not curve:
        return
    step, last = len(curve), curve[-1]
    if not math.isfinite(last):
        raise TrainingDiverged(
            f"training diverged: the loss became {last} at step {step}; nothing was "
            f"published — {_lr_hint(lr)}")
    at_chance = chance and step >= LOSS_WINDOW and all(
        abs(loss - chance) <= AT_CHANCE * chance for loss in curve[-LOSS_WINDOW:])
    if at_chance:
        raise TrainingDiverged(
            f"training diverged: the loss has sat at chance ({chance:.3g}: the model "
            f"predicts every token alike) since step {step - LOSS_WINDOW + 1}; nothing was "
            f"published — {_lr_hint(lr)}")
    if step < 2 * LOSS_WINDOW:
        return
    start = sum(curve[:LOSS_WINDOW]) / LOSS_WINDOW
    recent = sum(curve[-LOSS_WINDOW:]) / LOSS_WINDOW
    if recent > LOSS_CLIMB * start:
        raise TrainingDiverged(
            f"training diverged: the loss climbed from {start:.3g} to {recent:.3g} by step "
            f"{step}; nothing was published — {_lr_hint(lr)}")


def check_drift(drift: dict, max_drift: float, lr: float) -> None:
    """Raise `TrainingDiverged` if the adapter made the base's own held-out answers more than
    `max_drift` times less likely (see `evaluation.measure_drift`; 0: no limit)."""
    ratio = drift.get("perplexity_ratio")
    if ratio is None or not max_drift:
        return
    if not math.isfinite(ratio) or ratio > max_drift:
        raise TrainingDiverged(
            f"training broke the model: its own answers to held-out prompts became "
            f"×{ratio:.3g} less likely (perplexity ratio; limit ×{max_drift:g}, a healthy run "
            f"stays near ×1); nothing was published — {_lr_hint(lr)}, fewer --max-steps or "
            "a smaller --rank")
