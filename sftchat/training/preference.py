"""Learning from rejected answers: DPO on pairs, a KTO-style term on bad answers.

The store keeps answers the user did not want (`dataset.store.Rejected`): an edited answer's
original, a compare's loser, `data add --rejected` (each belongs to the example that replaced
it) and answers marked bad with ctrl+x (with no replacement). `plan_objective` decides, from
the run's `objective` setting, what each one teaches:

- `sft`: nothing (the curated answers are imitated, as always);
- `dpo`: a *pair* — the example's answer is preferred to the rejected one. DPO's loss
  (Rafailov et al. 2023): -log σ(β·[(log π(chosen) - log π_ref(chosen)) - (log π(rejected) -
  log π_ref(rejected))]), sums of log-probabilities over the final answer and its end token;
- `kto`: an answer to *avoid* — with no replacement there is nothing to imitate, only a
  direction away. KTO's undesirable term (Ethayarajh et al. 2024) without its KL reference
  point: σ(β·(log π(t) - log π_ref(t))), over the answer's *telltale* (its first sentence, on
  to where a replacement differs: `dataset.preferences.telltale`), the beginning that gives
  it away. Greedy decoding then leaves the bad answer where it starts; the sigmoid stops
  pushing once it is far from the base's, which spares what the model knew;
- `auto` (the default): pairs by DPO, answers with no replacement by the KTO-style term,
  plain SFT when the dataset has no rejected answer.

The SFT loss on the curated answers stays beside it (as in RPO: DPO alone can make the chosen
answer less likely too, as long as the rejected one drops faster), as do the regularizer and
the schedule. The reference model is the base with the adapter disabled (PEFT's
`disable_adapter()`: no second copy in memory); its log-probabilities are computed once per run,
in the run's one adapter-off pass (`terms.prepare_references`). `PreferenceLoss` is a loss
term (`terms.LossTerm`): a pair's rejected answer rides in its curated example's pass (the
chosen answer *is* the curated example, so DPO reads its log-probability from the forward the
curated loss already made), so every pair is trained once per epoch, with its example; the
other items (bad answers with no replacement) take their share of each step from a cycle
(every one once per epoch), in micro-batches of `batch_size` items.

Early stopping asks, beside every curated answer being reproduced, every item to be *met*:
a pair's reward margin (the bracket above) is at least `PREFERENCE_MARGIN`, and every rejected
answer is avoided by a margin — at some position of its telltale, its token loses to another
by `AVOID_MARGIN` logits (teacher-forced: greedy decoding leaves it there at the latest).
`measure` gives a run's figures: preference accuracy (chosen's log-prob above rejected's), the
mean margin, the same relative to the base (TRL's reward accuracy and margin), and how many
rejected answers greedy decoding still gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from sftchat.dataset.preferences import telltale
from sftchat.prompts import IGNORE_INDEX, EncodedExample, ExampleTooLongError, encode_example
from sftchat.training.distributed import SINGLE, Ranks
from sftchat.training.errors import TrainingError
from sftchat.training.terms import LossTerm, Read, StepFigures, sequence_positions

PAIR, AVOID = "pair", "avoid"
# A pair is met when the adapter's reward margin (nats, relative to the base) reaches this.
PREFERENCE_MARGIN = 1.0
# A rejected answer is avoided when one telltale token loses by this many logits: the same
# safety as the curated answers' early-stop margin, against cached decoding's arithmetic.
AVOID_MARGIN = 1.0
EVAL_BATCH = 8


@dataclass
class ObjectivePlan:
    """What a run does with its snapshot's rejected answers."""

    setting: str                        # the objective asked for (auto, sft, dpo, kto)
    pairs: list[tuple[dict, dict]]      # (example record, rejected record): DPO
    avoid: list[tuple[dict, dict | None]]  # (rejected record, its example or None): KTO-style
    unused: int                         # rejected answers this objective leaves out

    @property
    def objective(self) -> str:
        """What runs: "sft", "dpo", "kto" or "dpo+kto"."""
        parts = (["dpo"] if self.pairs else []) + (["kto"] if self.avoid else [])
        return "+".join(parts) or "sft"


def plan_objective(setting: str, records: Sequence[dict],
                   rejected: Sequence[dict]) -> ObjectivePlan:
    """Sort `rejected` (a snapshot's rejected records) by what `setting` makes of them;
    `records` are the examples trained on. Raises `TrainingError` when `dpo` or `kto` has
    nothing to learn from."""
    by_id = {record["id"]: record for record in records}
    pairs: list = []
    avoid: list = []
    unused = 0
    for answer in rejected:
        example = by_id.get(answer.get("example_id"))
        replaced = answer.get("example_id") is not None
        if setting == "sft" or (replaced and example is None) or (
                example is not None and example["output"].strip() == answer["output"].strip()):
            unused += 1   # not asked for; its example skipped as too long; no preference
        elif example is not None and setting in ("auto", "dpo"):
            pairs.append((example, answer))
        elif setting in ("auto", "kto"):
            avoid.append((answer, example))
        else:
            unused += 1   # dpo: a bad answer with no replacement has no pair
    if setting == "dpo" and not pairs:
        raise TrainingError(
            "--objective dpo needs rejected answers that were replaced (an edited answer's "
            "original, a compare's loser, `sftchat data add --response … --rejected …`), and "
            f"this dataset has none{_and_bad(unused)}; use --objective auto or kto")
    if setting == "kto" and not avoid:
        raise TrainingError(
            "--objective kto needs rejected answers (ctrl+x on an answer in the chat, or "
            "`sftchat data add --instruction … --rejected …`), and this dataset has none; use "
            "--objective sft or auto")
    return ObjectivePlan(setting, pairs, avoid, unused)


def _and_bad(unused: int) -> str:
    return f" ({unused} rejected answer{'' if unused == 1 else 's'} with no replacement)" \
        if unused else ""


# --------------------------------------------------------------------------- encoding


@dataclass
class PreferenceItem:
    """One rejected answer, tokenized for training (final answer learned only)."""

    kind: str                           # PAIR or AVOID
    rejected_id: int
    rejected: EncodedExample
    telltale: int                       # its first learned positions that give it away
    chosen: EncodedExample | None = None   # a pair's preferred answer
    example_id: int | None = None          # the curated example it belongs to
    # The base's log-probabilities (adapter off), set by `PreferenceLoss.prepare`.
    reference_chosen: float = 0.0
    reference_rejected: float = 0.0
    reference_telltale: float = 0.0


def _final_answer_only(example: EncodedExample) -> EncodedExample:
    """`example` learning its last answer and end token only: a preference is about the
    answer to the last message, whatever earlier turns the curated example learns."""
    start = len(example.prompt.ids)
    return EncodedExample(example.input_ids, [IGNORE_INDEX] * start + example.labels[start:],
                          example.prompt)


def telltale_tokens(tokenizer, answer_ids: Sequence[int], rejected: str,
                    chosen: str | None) -> int:
    """How many of a rejected answer's tokens (`answer_ids`, its end token last) spell its
    telltale: all of them (the end included) for an answer that is the start of its chosen
    one (it stopped too soon)."""
    if chosen is not None and chosen.strip().startswith(rejected.strip()):
        return len(answer_ids)
    target = len(telltale(rejected, chosen).strip())
    for count in range(1, len(answer_ids) + 1):
        if len(tokenizer.decode(list(answer_ids[:count]),
                                skip_special_tokens=True).strip()) >= target:
            return count
    return len(answer_ids)


def encode_items(plan: ObjectivePlan, tokenizer, template: str,
                 max_length: int) -> tuple[list[PreferenceItem], list[int]]:
    """(the plan's items, ids of rejected answers too long for `max_length`). A pair's two
    answers follow the example's conversation (its instruction may have been edited since
    the answer was rejected: the preference is for the prompt as it stands)."""
    items, skipped = [], []
    sources = [(PAIR, answer, example) for example, answer in plan.pairs] + \
              [(AVOID, answer, example) for answer, example in plan.avoid]
    for kind, answer, example in sources:
        conversation = example if kind == PAIR else answer
        chosen_text = example["output"] if example is not None else None
        try:
            rejected = _final_answer_only(encode_example(
                tokenizer, template, {**conversation, "output": answer["output"]}, max_length))
            chosen = _final_answer_only(encode_example(
                tokenizer, template, example, max_length)) if kind == PAIR else None
        except ExampleTooLongError:
            skipped.append(answer["id"])
            continue
        answer_ids = rejected.input_ids[len(rejected.prompt.ids):]
        items.append(PreferenceItem(
            kind, answer["id"], rejected,
            telltale_tokens(tokenizer, answer_ids, answer["output"], chosen_text), chosen,
            example["id"] if example is not None else None))
    return items, skipped


# --------------------------------------------------------------------------- scoring


def span_scores(out, spans: Sequence[tuple[int, int, int | None]]):
    """For each (sequence, first, stop) span of learned positions of `out` (`first` < 0
    counts from the sequence's end; `stop` None: to its end): (summed log-probabilities, a
    differentiable [n] tensor; the smallest margin of a target over the best other token
    there, floats)."""
    import torch

    scores = out.token_scores()
    count = int(out.owners.max()) + 1 if len(out.owners) else 0
    position, size = sequence_positions(out, count)
    sums, worst = [], []
    for sequence, first, stop in spans:
        low = size + first if first < 0 else first
        high = size if stop is None else stop
        mask = (out.owners == sequence) & (position >= low) & (position < high)
        sums.append((scores.logp * mask).sum())
        worst.append(torch.where(mask, scores.margin, math.inf).min())
    if not spans:
        return torch.zeros(0, device=out.owners.device), []
    return torch.stack(sums), torch.stack(worst).cpu().tolist()


@dataclass
class ItemScores:
    """What one forward says about some items (their order)."""

    chosen: list            # per item: log π(chosen) tensor (None for AVOID)
    rejected: list          # per item: log π(rejected) tensor
    telltale: list          # per item: log π(telltale) tensor
    given: list[bool]       # every telltale token is the model's first choice
    avoided: list[bool]     # one telltale token loses by AVOID_MARGIN or more


def read_items(out, items: Sequence[PreferenceItem],
               rows: Sequence[tuple[int | None, int]]) -> ItemScores:
    """`ItemScores` of `items` from `out`, where `rows[i]` = (the forward's sequence holding
    item i's chosen answer — its final answer is its last learned positions — or None, the
    sequence of its rejected answer)."""
    spans = []
    for item, (chosen, rejected) in zip(items, rows):
        if chosen is not None:
            spans.append((chosen, -item.chosen.num_learned, None))
        spans += [(rejected, 0, None), (rejected, 0, item.telltale)]
    sums, worst = span_scores(out, spans)
    chosen_logp, rejected_logp, telltale_logp, given, avoided = [], [], [], [], []
    at = 0
    for chosen, _rejected in rows:
        chosen_logp.append(sums[at] if chosen is not None else None)
        at += chosen is not None
        rejected_logp.append(sums[at])
        telltale_logp.append(sums[at + 1])
        given.append(worst[at + 1] > 0)
        avoided.append(worst[at + 1] <= -AVOID_MARGIN)
        at += 2
    return ItemScores(chosen_logp, rejected_logp, telltale_logp, given, avoided)


def item_sequences(items: Sequence[PreferenceItem]):
    """(the sequences of a forward over `items` alone, their `read_items` rows)."""
    sequences, rows = [], []
    for item in items:
        chosen = None
        if item.chosen is not None:
            chosen = len(sequences)
            sequences.append(item.chosen)
        rows.append((chosen, len(sequences)))
        sequences.append(item.rejected)
    return sequences, rows


def score_items(loss_function, items: Sequence[PreferenceItem]) -> ItemScores:
    """One forward over `items`' sequences (each pair's chosen answer and every rejected)."""
    sequences, rows = item_sequences(items)
    return read_items(loss_function.learned_logits(sequences), items, rows)


# --------------------------------------------------------------------------- the loss


class PreferenceLoss(LossTerm):
    """The preference term of each optimizer step (see the module docstring)."""

    def __init__(self, items: Sequence[PreferenceItem], beta: float, weight: float,
                 batch_size: int) -> None:
        self.items = list(items)
        self.beta = beta
        self.weight = weight
        self.batch_size = max(1, batch_size)
        self.riding: dict[int, list[int]] = {}   # example index -> its pairs' item indices
        self.loose = list(range(len(self.items)))  # the items with a cycle of their own
        self.per_step = len(self.loose)
        self.cursor = 0
        self._pool: list[tuple[int, str]] = []

    def ride_with(self, encoded: Sequence[EncodedExample], example_ids: Sequence[int]) -> None:
        """Let each pair ride in its curated example's pass where that example's sequence is
        the pair's chosen one (the same tokens)."""
        index = {example_id: i for i, example_id in enumerate(example_ids)}
        self.riding, self.loose = {}, []
        for number, item in enumerate(self.items):
            example = index.get(item.example_id)
            if item.kind == PAIR and example is not None and \
                    encoded[example].input_ids == item.chosen.input_ids:
                self.riding.setdefault(example, []).append(number)
            else:
                self.loose.append(number)
        self.per_step = len(self.loose)

    def fit(self, steps_per_epoch: int) -> None:
        """Every loose item once per epoch of the curated examples."""
        self.per_step = max(1, math.ceil(len(self.loose) / max(1, steps_per_epoch)))

    def next_loose(self, ranks: Ranks = SINGLE) -> tuple[list[int], list[int]]:
        """The step's loose items: (this rank's, every rank's)."""
        if not self.loose:
            return [], []
        count = min(self.per_step, len(self.loose))
        every = [self.loose[(self.cursor + i) % len(self.loose)] for i in range(count)]
        self.cursor = (self.cursor + count) % len(self.loose)
        return ranks.deal(every), every

    def loose_reads(self, indices: Sequence[int], normaliser: float):
        """(sequences, `Read`) of each micro-batch of the loose `indices`."""
        for start in range(0, len(indices), self.batch_size):
            chunk = list(indices[start:start + self.batch_size])
            sequences, rows = item_sequences([self.items[i] for i in chunk])
            yield sequences, Read(self, [(i, *row) for i, row in zip(chunk, rows)], normaliser)

    # -- references: the base's log-probabilities, in the run's adapter-off pass

    def reference_pool(self):
        pool, self._pool = [], []
        for number, item in enumerate(self.items):
            if item.chosen is not None:
                pool.append(item.chosen)
                self._pool.append((number, "chosen"))
            pool.append(item.rejected)
            self._pool.append((number, "rejected"))
        return pool

    def take_reference(self, start: int, out) -> None:
        count = int(out.owners.max()) + 1 if len(out.owners) else 0
        roles = self._pool[start:start + count]
        spans = []
        for sequence, (number, role) in enumerate(roles):
            item = self.items[number]
            if role == "chosen":
                spans.append((sequence, -item.chosen.num_learned, None))
            else:
                spans += [(sequence, 0, None), (sequence, 0, item.telltale)]
        sums = iter(float(value) for value in span_scores(out, spans)[0])
        for number, role in roles:
            item = self.items[number]
            if role == "chosen":
                item.reference_chosen = next(sums)
            else:
                item.reference_rejected, item.reference_telltale = next(sums), next(sums)

    # -- the loss

    def _item_losses(self, items, scores: ItemScores) -> list:
        import torch.nn.functional as F

        losses = []
        for item, chosen, rejected, told in zip(items, scores.chosen, scores.rejected,
                                                scores.telltale):
            if item.kind == PAIR:
                reward = (chosen - item.reference_chosen) - (rejected - item.reference_rejected)
                losses.append(-F.logsigmoid(self.beta * reward))
            else:
                losses.append(F.sigmoid(self.beta * (told - item.reference_telltale)))
        return losses

    def met(self, item: PreferenceItem, chosen, rejected, avoided: bool) -> bool:
        """Whether `item` is learned (see the module docstring)."""
        if not avoided:
            return False
        if item.kind != PAIR:
            return True
        reward = (float(chosen.detach()) - item.reference_chosen) - \
            (float(rejected.detach()) - item.reference_rejected)
        return reward >= PREFERENCE_MARGIN

    def loss(self, out, read: Read, figures: StepFigures):
        """`read.rows`: (item index, its chosen answer's sequence or None, its rejected's);
        `read.normaliser`: the step's items over every rank."""
        numbers = [row[0] for row in read.rows]
        items = [self.items[i] for i in numbers]
        scores = read_items(out, items, [row[1:] for row in read.rows])
        total = sum(self._item_losses(items, scores)) / read.normaliser
        figures.preference_loss += float(total.detach())
        for number, item, chosen, rejected, avoided in zip(
                numbers, items, scores.chosen, scores.rejected, scores.avoided):
            figures.item_codes[number] = 1.0 if self.met(item, chosen, rejected, avoided) \
                else 2.0
        return self.weight * total

    def all_met(self, loss_function, ranks: Ranks = SINGLE) -> bool:
        """Every item met, in eval mode (the caller's), each rank its share."""
        import torch

        good = True
        mine = ranks.deal(list(range(len(self.items))))
        with torch.no_grad():
            for start in range(0, len(mine), EVAL_BATCH):
                items = [self.items[i] for i in mine[start:start + EVAL_BATCH]]
                scores = score_items(loss_function, items)
                good = good and all(self.met(item, c, r, a) for item, c, r, a in zip(
                    items, scores.chosen, scores.rejected, scores.avoided))
        return ranks.sum([0.0 if good else 1.0])[0] == 0

    def measure(self, loss_function) -> dict:
        """The run's figures (eval mode, no gradients): see `preference_figures`."""
        import torch

        rows = []
        with torch.no_grad():
            for start in range(0, len(self.items), EVAL_BATCH):
                items = self.items[start:start + EVAL_BATCH]
                scores = score_items(loss_function, items)
                for item, chosen, rejected, given in zip(items, scores.chosen,
                                                         scores.rejected, scores.given):
                    rows.append((item, None if chosen is None else float(chosen),
                                 float(rejected), given))
        return preference_figures(rows)


def preference_figures(rows) -> dict:
    """From (item, log π(chosen) or None, log π(rejected), still given) per item: `pairs`,
    `accuracy` (share of pairs whose chosen answer is more likely than the rejected one),
    `mean_margin` (their mean log-probability difference, nats), `reward_accuracy` and
    `mean_reward_margin` (the same relative to the base: TRL's DPO figures), `rejected`
    (every item), `still_given` and `still_given_ids` (rejected answers greedy decoding still
    gives)."""
    pairs = [(item, chosen, rejected) for item, chosen, rejected, _ in rows
             if item.kind == PAIR]
    margins = [chosen - rejected for _, chosen, rejected in pairs]
    rewards = [(chosen - item.reference_chosen) - (rejected - item.reference_rejected)
               for item, chosen, rejected in pairs]
    given = [item.rejected_id for item, _, _, still in rows if still]
    figures = {"pairs": len(pairs), "avoid": len(rows) - len(pairs), "rejected": len(rows),
               "still_given": len(given), "still_given_ids": given,
               "accuracy": None, "mean_margin": None, "reward_accuracy": None,
               "mean_reward_margin": None}
    if pairs:
        figures.update(
            accuracy=round(sum(m > 0 for m in margins) / len(pairs), 4),
            mean_margin=round(sum(margins) / len(pairs), 4),
            reward_accuracy=round(sum(r > 0 for r in rewards) / len(pairs), 4),
            mean_reward_margin=round(sum(rewards) / len(pairs), 4))
    return figures
