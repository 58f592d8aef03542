"""What a run learned and what it changed, measured before the adapter is published.

- `replay`: how many curated examples the model reproduces exactly under greedy decoding;
  `curated_replay` is the one measure the trainer, the app's review and `sftchat eval` report:
  the batch layout checked first (`LossFunction.verify`), at most `REPLAY_SAMPLE` examples (a
  fixed sample, the same for the same seed), run in steps (`curated_replay_steps`) so that the
  engine thread can answer a chat message between two batches.
  Greedy decoding reproduces a response exactly when, fed the response so far, the model's
  first choice is always the next response token and finally the end token; so one
  teacher-forced forward pass per example decides it, instead of generating every answer
  (`loss.per_example_errors`). The smallest margin by which a target token beats the
  runner-up says how firmly; the trainer's early stopping asks for a small positive one, so
  that an answer does not flip under the slightly different arithmetic of cached decoding.
- `measure_drift`: on held-out general prompts (`anchors.DRIFT_PROMPTS`), the base model's own
  greedy answers are scored under the adapter and under the base (PEFT's
  `disable_adapter()`: the same weights, adapter off). Reported as the mean per-token KL
  divergence KL(base ‖ adapter) and the perplexity ratio of those answers (1.0: unchanged;
  1.5: the adapter finds the base's answers 50% more surprising per token).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Generator, Sequence

from sftchat.prompts import EncodedExample
from sftchat.training.loss import per_example_errors

EVAL_BATCH = 8
# Beyond this many curated examples the replay measures a fixed random sample of them: one
# forward pass each is cheap for a dozen, but a third of an epoch for fifty thousand.
REPLAY_SAMPLE = 1000


@dataclass
class ReplayReport:
    exact: list[bool]       # per example: reproduced exactly under greedy decoding
    margins: list[float]    # per example: smallest logit margin of a target token
    token_accuracy: float   # share of learned tokens that are the model's first choice

    @property
    def reproduced(self) -> int:
        return sum(self.exact)

    def to_dict(self, ids: Sequence[int] | None = None) -> dict:
        out = {"examples": len(self.exact), "reproduced": self.reproduced,
               "token_accuracy": round(self.token_accuracy, 4),
               "method": "greedy (teacher-forced arg-max)"}
        if ids is not None:
            out["not_reproduced"] = [i for i, ok in zip(ids, self.exact) if not ok]
        return out


def replay(loss_function, examples: Sequence[EncodedExample],
           batch_size: int = EVAL_BATCH) -> ReplayReport:
    """Which `examples` the model reproduces exactly (run under `torch.no_grad`, eval mode)."""
    return _run(replay_steps(loss_function, examples, batch_size))


def replay_steps(loss_function, examples: Sequence[EncodedExample],
                 batch_size: int = EVAL_BATCH, before_batch: Callable[[], None] | None = None,
                 ) -> Generator[int, None, ReplayReport]:
    """`replay` one batch per step: yields the examples done so far, returns the report.
    `before_batch` runs before each (the engine thread applies the adapter measured)."""
    import torch

    exact: list[bool] = []
    margins: list[float] = []
    wrong_tokens = total_tokens = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        if before_batch is not None:
            before_batch()
        with torch.no_grad():
            out = loss_function.learned_logits(chunk)
            errors, chunk_margins = per_example_errors(out, len(chunk))
        exact += [int(e) == 0 for e in errors]
        margins += [float(m) for m in chunk_margins]
        wrong_tokens += int(errors.sum())
        total_tokens += int(out.targets.numel())
        yield len(exact)
    accuracy = 1 - wrong_tokens / total_tokens if total_tokens else 1.0
    return ReplayReport(exact, margins, accuracy)


def replay_sample(count: int, seed: int) -> list[int]:
    """The indices of the examples a replay measures: all of them up to `REPLAY_SAMPLE`, else
    a sample fixed by `seed` (so the trainer and the review measure the same examples)."""
    indices = list(range(count))
    if count > REPLAY_SAMPLE:
        indices = sorted(random.Random(seed).sample(indices, REPLAY_SAMPLE))
    return indices


@dataclass
class CuratedReplay:
    report: ReplayReport
    ids: list[int]          # the example ids measured (a sample when there are many)
    total: int              # how many curated examples there were

    def to_dict(self) -> dict:
        out = self.report.to_dict(self.ids)
        if len(self.ids) < self.total:
            out["sampled_from"] = self.total
        return out


def curated_replay_steps(loss_function, encoded: Sequence[EncodedExample],
                         ids: Sequence[int], seed: int,
                         before_batch: Callable[[], None] | None = None,
                         ) -> Generator[tuple[int, int], None, CuratedReplay]:
    """The curated replay, in steps: checks the batch layout, measures the sample, yields
    (examples done, examples measured) after each batch."""
    indices = replay_sample(len(encoded), seed)
    chosen = [encoded[i] for i in indices]
    if chosen and not loss_function.verified:
        if before_batch is not None:
            before_batch()
        loss_function.verify(chosen[:EVAL_BATCH])
        yield 0, len(chosen)
    steps = replay_steps(loss_function, chosen, before_batch=before_batch)
    while True:
        try:
            done = next(steps)
        except StopIteration as finished:
            return CuratedReplay(finished.value, [ids[i] for i in indices], len(encoded))
        yield done, len(chosen)


def curated_replay(loss_function, encoded: Sequence[EncodedExample], ids: Sequence[int],
                   seed: int) -> CuratedReplay:
    """`curated_replay_steps` run to the end (the trainer's final measure)."""
    return _run(curated_replay_steps(loss_function, encoded, ids, seed))


def _run(steps: Generator):
    while True:
        try:
            next(steps)
        except StopIteration as finished:
            return finished.value


def measure_drift(loss_function, model, anchors: Sequence[EncodedExample],
                  batch_size: int = EVAL_BATCH) -> dict:
    """KL(base ‖ adapter) per token and the perplexity ratio on `anchors` (see above)."""
    import torch
    import torch.nn.functional as F

    kl_sum = nll_adapter = nll_base = 0.0
    tokens = 0
    with torch.no_grad():
        for start in range(0, len(anchors), batch_size):
            chunk = anchors[start:start + batch_size]
            tuned = loss_function.learned_logits(chunk)
            with model.disable_adapter():
                base = loss_function.learned_logits(chunk)
            # Chunk by chunk of positions: never the whole batch's logits at once.
            for (at, tuned_logits), (_, base_logits) in zip(tuned.logit_chunks(),
                                                            base.logit_chunks()):
                targets = tuned.targets[at:at + len(tuned_logits), None]
                tuned_logp = F.log_softmax(tuned_logits, dim=-1)
                base_logp = F.log_softmax(base_logits, dim=-1)
                kl_sum += float((base_logp.exp() * (base_logp - tuned_logp)).sum())
                nll_adapter -= float(tuned_logp.gather(1, targets).sum())
                nll_base -= float(base_logp.gather(1, targets).sum())
            tokens += int(tuned.targets.numel())
    if not tokens:
        return {"prompts": 0}
    return {
        "prompts": len(anchors),
        "tokens": tokens,
        "kl_per_token": round(kl_sum / tokens, 5),
        "perplexity_ratio": round(math.exp((nll_adapter - nll_base) / tokens), 4),
    }
