"""Is the new adapter better than the one it replaces? One comparison, for the app's review
before a swap and for `sftchat eval` (the same numbers in both).

For each model compared (an adapter, or the base), on one loaded engine:

- **curated**: how many of the dataset's examples it reproduces exactly under greedy decoding
  (one teacher-forced forward per example, `training.evaluation.curated_replay_steps`: the
  measure the trainer reports, with its batch-layout check and its sample of at most 1,000,
  the same examples for the same seed), through the template that model answers with; a
  conversation is replayed whole, every answer it learns included;
- **pins**: its greedy answer to every pinned prompt (`dataset.pins`), generated the way the
  chat generates — after the pin's earlier turns, under its system prompt — and whether it
  still gives the accepted answer: the answer starts with it (an accepted answer may have
  been cut at the chat's token limit; what follows it is shown in the review, not counted);
- **bad answers**: its greedy answer to the prompt of every rejected answer (`dataset.store
  .Rejected`: marked bad, the original of an edit, the loser of a compare), generated as the
  pins are, and whether it gives that answer again (`dataset.preferences.gives`: it begins
  with the rejected answer's first sentence, or further where the chosen answer replacing
  it differs later). At most `REJECTED_SAMPLE` of them, the most recent (highest ids):
  `compare` keeps those;
- **prompts**: its greedy answers to extra prompts (`sftchat eval --prompts FILE`), shown
  side by side, not scored;
- **drift**, and the **preference figures** of a run that learned from rejected answers: what
  the adapter's own training run measured (sftchat.json).

A *regression* is a candidate that reproduces fewer curated answers than the current model,
loses a pin the current model keeps, or gives a bad answer the current model avoids. (An
accepted answer that was sampled, at a temperature above 0, may not be the greedy answer of
any model: such a pin is shown, with whether the new adapter answers it as the current one
does, but cannot be lost.)

The whole comparison is one background job on the engine thread (`sftchat.engine_thread`),
in steps — a batch of the replay, a token of a pinned answer — so a chat answer asked
meanwhile runs after the step in progress; it is cancelled by its `cancel` event and reports
`progress(done, total)` as it goes. No Textual here.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from sftchat.adapters import registry as adapter_registry
from sftchat.adapters.registry import AdapterError
from sftchat.config import GenerationSettings
from sftchat.dataset.pins import Pin
from sftchat.dataset.preferences import gives, telltale
from sftchat.dataset.store import Example, Rejected
from sftchat.engine import Answer
from sftchat.engine_thread import BACKGROUND, Cancel, JobCancelled, Steps
from sftchat.prompts import ExampleTooLongError, encode_example, encode_text

# A pinned answer is compared in full: generate a little past its length.
PIN_EXTRA_TOKENS = 16
PROMPT_TOKENS = 128
# Bad answers replayed per model: the most recent ones (each is a greedy answer to generate).
REJECTED_SAMPLE = 32
# Examples tokenized per step (tokenizing thousands is seconds: the chat goes in between).
ENCODE_CHUNK = 64

# progress(model, examples replayed, examples to replay): model is an adapter name or None.
Progress = Callable[[str | None, int, int], None]
# A rejected answer and the response of the example it belongs to (None: no replacement).
BadAnswer = tuple[Rejected, str | None]


def keeps(answer: str, accepted: str) -> bool:
    """Whether a greedy `answer` still gives the pinned, `accepted` one."""
    return answer.startswith(accepted)


def pair_rejected(examples: Sequence[Example], rejected: Sequence[Rejected]) -> list[BadAnswer]:
    """Each rejected answer with the response of its example in `examples` (read in the same
    transaction), None for a bad answer with no replacement."""
    responses = {example.id: example.response for example in examples}
    return [(answer, responses.get(answer.example_id)) for answer in rejected]


def latest_rejected(rejected: Sequence[BadAnswer]) -> list[BadAnswer]:
    """The `REJECTED_SAMPLE` most recent (highest ids) of `rejected`, in id order."""
    return sorted(rejected, key=lambda pair: pair[0].id)[-REJECTED_SAMPLE:]


@dataclass
class ModelResult:
    name: str | None                 # adapter name; None is the base model
    curated: int                     # examples reproduced exactly
    examples: int                    # examples replayed
    not_reproduced: list[int]        # their ids
    pins_kept: int
    pin_answers: list[str]
    prompt_answers: list[str]
    drift: dict | None               # from the adapter's training run
    sampled_from: int | None = None  # curated examples in all, when a sample was replayed
    bad_answers: list[str] = field(default_factory=list)  # its answers to the rejected ones
    avoided: int = 0                 # of them, those that do not give the rejected answer
    preferences: dict | None = None  # its training run's preference figures (sftchat.json)

    @property
    def label(self) -> str:
        return self.name or "base model"


@dataclass
class Comparison:
    current: ModelResult
    candidate: ModelResult
    pins: list[Pin]
    prompts: list[str] = field(default_factory=list)
    rejected: list[BadAnswer] = field(default_factory=list)
    rejected_from: int | None = None   # rejected answers in all, when only the latest were

    @property
    def broken_pins(self) -> list[int]:
        """Indexes of the pins the current model keeps and the candidate loses."""
        return [i for i, pin in enumerate(self.pins)
                if keeps(self.current.pin_answers[i], pin.response)
                and not keeps(self.candidate.pin_answers[i], pin.response)]

    def pin_status(self, index: int) -> str:
        """"kept" (the accepted answer), "same" (as the current model answers) or
        "changed"."""
        new = self.candidate.pin_answers[index]
        if keeps(new, self.pins[index].response):
            return "kept"
        return "same" if new == self.current.pin_answers[index] else "changed"

    def _gives(self, model: ModelResult, index: int) -> bool:
        answer, chosen = self.rejected[index]
        return gives(model.bad_answers[index], answer.response, chosen)

    def bad_answer_status(self, index: int) -> str:
        """"avoided" (the candidate does not give rejected answer `index`) or "given"."""
        return "given" if self._gives(self.candidate, index) else "avoided"

    @property
    def newly_given(self) -> list[int]:
        """Indexes of the bad answers the current model avoids and the candidate gives."""
        return [i for i in range(len(self.rejected))
                if not self._gives(self.current, i) and self._gives(self.candidate, i)]

    @property
    def regression(self) -> bool:
        return (self.candidate.curated < self.current.curated or bool(self.broken_pins)
                or bool(self.newly_given))

    def avoided_figures(self, current: str, noun: str = "") -> str:
        """"5/6{noun} (CURRENT: 1/6)": bad answers the candidate and the current model avoid
        (and which were replayed, when only the latest were)."""
        total = len(self.rejected)
        return (f"{self.candidate.avoided}/{total}{noun} ({current}: "
                f"{self.current.avoided}/{total})"
                + (f", the latest {total} of {self.rejected_from}" if self.rejected_from
                   else ""))

    def verdict(self) -> str:
        """One line: what the candidate does compared with the current model."""
        new, old = self.candidate, self.current
        parts = [f"reproduces {new.curated}/{new.examples} curated answers "
                 f"({old.label}: {old.curated}/{old.examples})"
                 + (f" of a sample of {new.sampled_from}" if new.sampled_from else "")]
        if self.pins:
            parts.append(f"keeps {new.pins_kept}/{len(self.pins)} pinned answers "
                         f"({old.label}: {old.pins_kept}/{len(self.pins)})")
        if self.rejected:
            parts.append("avoids " + self.avoided_figures(old.label, " bad answers"))
        if new.drift and new.drift.get("perplexity_ratio") is not None:
            parts.append(f"drift ×{new.drift['perplexity_ratio']:.2f} perplexity")
        return f"{new.label}: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "current": asdict(self.current), "candidate": asdict(self.candidate),
            "pins": [pin.to_dict() for pin in self.pins], "prompts": self.prompts,
            "broken_pins": [self.pins[i].id for i in self.broken_pins],
            "rejected": [{**answer.to_dict(), "chosen": chosen,
                          "status": self.bad_answer_status(i),
                          "current_status": "given" if self._gives(self.current, i)
                          else "avoided"}
                         for i, (answer, chosen) in enumerate(self.rejected)],
            "rejected_from": self.rejected_from,
            "newly_given": [self.rejected[i][0].id for i in self.newly_given],
            "regression": self.regression,
        }


def evaluate_steps(engine, name: str | None, examples: Sequence[Example], pins: Sequence[Pin],
                   prompts: Sequence[str], max_length: int, seed: int,
                   cancel: Cancel, progress: Progress | None = None,
                   rejected: Sequence[BadAnswer] = ()) -> Steps:
    """Measure adapter `name` (None: the base) on the engine thread, in steps; returns its
    `ModelResult`. Every one of `rejected` is replayed (`compare` keeps the latest
    `REJECTED_SAMPLE`)."""
    from sftchat.training.evaluation import curated_replay_steps
    from sftchat.training.loss import LossFunction

    name = engine.ensure_loaded(name)
    info = adapter_registry.resolve(engine.adapters_dir, name) if name else None
    yield
    with engine.answering_as(name):
        template = engine.template_for(name)
        encoded, ids = [], []
        for index, example in enumerate(examples):
            try:
                encoded.append(encode_example(engine.tokenizer, template, example.to_record(),
                                              max_length))
                ids.append(example.id)
            except ExampleTooLongError:
                pass  # training skips it too: not something the adapter could learn
            if index % ENCODE_CHUNK == ENCODE_CHUNK - 1:
                yield
        replayed = None
        if encoded:
            loss_function = LossFunction(engine.model, engine.tokenizer.pad_token_id,
                                         engine.model.device)
            steps = curated_replay_steps(loss_function, encoded, ids, seed,
                                         before_batch=lambda: engine.slots.apply(name))
            while True:
                _check(cancel)
                try:
                    done, total = next(steps)
                except StopIteration as finished:
                    replayed = finished.value
                    break
                if progress is not None:
                    progress(name, done, total)
                yield

        def answer(text: str, tokens: int, asked: Pin | Rejected | None = None) -> Steps:
            # `asked`: the conversation a pin or a rejected answer was asked in.
            settings = GenerationSettings(temperature=0, max_new_tokens=tokens)
            prompt = engine.encode(template, text, asked.context if asked else (),
                                   asked.input if asked else "",
                                   asked.system if asked else "", tokens)
            result = Answer()
            for _ in engine.answer_steps(name, prompt.ids, template, settings, cancel, result):
                yield
            _check(cancel)
            return result.text

        pin_answers = []
        for pin in pins:
            # Counted as the answer is trained and prompted: as plain text (prompts).
            tokens = len(encode_text(engine.tokenizer, pin.response))
            pin_answers.append((yield from answer(pin.instruction, tokens + PIN_EXTRA_TOKENS,
                                                  pin)))
        bad_answers = []
        for rejected_answer, chosen in rejected:
            tokens = len(encode_text(engine.tokenizer,
                                     telltale(rejected_answer.response, chosen)))
            bad_answers.append((yield from answer(rejected_answer.instruction,
                                                  tokens + PIN_EXTRA_TOKENS, rejected_answer)))
        prompt_answers = []
        for prompt in prompts:
            prompt_answers.append((yield from answer(prompt, PROMPT_TOKENS)))
    report = replayed.report if replayed else None
    return ModelResult(
        name=name,
        curated=report.reproduced if report else 0, examples=len(replayed.ids) if report else 0,
        not_reproduced=[i for i, ok in zip(replayed.ids, report.exact) if not ok]
        if report else [],
        pins_kept=sum(keeps(got, pin.response) for got, pin in zip(pin_answers, pins)),
        pin_answers=pin_answers, prompt_answers=prompt_answers,
        drift=((info.meta.get("metrics") or {}).get("drift") if info else None),
        preferences=((info.meta.get("metrics") or {}).get("preferences") if info else None),
        sampled_from=replayed.total if replayed and len(replayed.ids) < replayed.total
        else None,
        bad_answers=bad_answers,
        avoided=sum(not gives(got, bad.response, chosen)
                    for got, (bad, chosen) in zip(bad_answers, rejected)),
    )


def _check(cancel: Cancel) -> None:
    if cancel.is_set():
        raise JobCancelled("the comparison was cancelled")


def compare(engine, current: str | None, candidate: str, examples: Sequence[Example],
            pins: Sequence[Pin], prompts: Sequence[str] = (), max_length: int = 1024,
            seed: int = 0, cancel: threading.Event | None = None,
            progress: Progress | None = None, rejected: Sequence[BadAnswer] = ()
            ) -> Comparison:
    """`candidate` against `current` (None: the base model) on the same data, as one
    background job on the engine thread (waits for it; `JobCancelled` if `cancel` is set).
    `rejected`: (rejected answer, its example's response or None) pairs (`pair_rejected`),
    of which the latest `REJECTED_SAMPLE` (highest ids) are replayed."""
    if candidate in (None, "none"):
        raise AdapterError("the candidate must be an adapter; the base model can only be the "
                           "current one")
    cancel = Cancel(cancel)
    sample = latest_rejected(rejected)

    def steps() -> Steps:
        args = (examples, pins, prompts, max_length, seed, cancel, progress, sample)
        old = yield from evaluate_steps(engine, current, *args)
        new = yield from evaluate_steps(engine, candidate, *args)
        return Comparison(current=old, candidate=new, pins=list(pins), prompts=list(prompts),
                          rejected=sample,
                          rejected_from=len(rejected) if len(sample) < len(rejected) else None)

    return engine.jobs.submit(steps(), BACKGROUND, cancel, "compare").wait()
