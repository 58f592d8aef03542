"""Is the new adapter better than the one it replaces? One comparison, for the app's review
before a swap and for `sftchat eval` (the same numbers in both).

For each model compared (an adapter, or the base), on one loaded engine:

- **curated**: how many of the dataset's examples it reproduces exactly under greedy decoding
  (one teacher-forced forward per example, `training.evaluation.replay`: the measure the
  trainer reports), through the template that model answers with; a conversation is replayed
  whole, every answer it learns included;
- **pins**: its greedy answer to every pinned prompt (`dataset.pins`), generated the way the
  chat generates — after the pin's earlier turns, under its system prompt — and whether it
  still gives the accepted answer: the answer starts with it (an accepted answer may have
  been cut at the chat's token limit; what follows it is shown in the review, not counted);
- **prompts**: its greedy answers to extra prompts (`sftchat eval --prompts FILE`), shown
  side by side, not scored;
- **drift**: what the adapter's own training run measured on held-out prompts (sftchat.json).

A *regression* is a candidate that reproduces fewer curated answers than the current model,
or loses a pin the current model keeps. (An accepted answer that was sampled, at a
temperature above 0, may not be the greedy answer of any model: such a pin is shown, with
whether the new adapter answers it as the current one does, but cannot be lost.)

No Textual here; the engine's lock is held per model, so a chat answer can still come in
between (it waits, it is not mixed in).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

from sftchat.adapters.registry import AdapterError
from sftchat.config import GenerationSettings
from sftchat.dataset.pins import Pin
from sftchat.dataset.store import Example
from sftchat.prompts import ExampleTooLongError, encode_example

# A pinned answer is compared in full: generate a little past its length.
PIN_EXTRA_TOKENS = 16
PROMPT_TOKENS = 128


def keeps(answer: str, accepted: str) -> bool:
    """Whether a greedy `answer` still gives the pinned, `accepted` one."""
    return answer.startswith(accepted)


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

    @property
    def label(self) -> str:
        return self.name or "base model"


@dataclass
class Comparison:
    current: ModelResult
    candidate: ModelResult
    pins: list[Pin]
    prompts: list[str] = field(default_factory=list)

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

    @property
    def regression(self) -> bool:
        return self.candidate.curated < self.current.curated or bool(self.broken_pins)

    def verdict(self) -> str:
        """One line: what the candidate does compared with the current model."""
        new, old = self.candidate, self.current
        parts = [f"reproduces {new.curated}/{new.examples} curated answers "
                 f"({old.label}: {old.curated}/{old.examples})"]
        if self.pins:
            parts.append(f"keeps {new.pins_kept}/{len(self.pins)} pinned answers "
                         f"({old.label}: {old.pins_kept}/{len(self.pins)})")
        if new.drift and new.drift.get("perplexity_ratio") is not None:
            parts.append(f"drift ×{new.drift['perplexity_ratio']:.2f} perplexity")
        return f"{new.label}: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {
            "current": asdict(self.current), "candidate": asdict(self.candidate),
            "pins": [pin.to_dict() for pin in self.pins], "prompts": self.prompts,
            "broken_pins": [self.pins[i].id for i in self.broken_pins],
            "regression": self.regression,
        }


def evaluate(engine, name: str | None, examples: Sequence[Example], pins: Sequence[Pin],
             prompts: Sequence[str] = (), max_length: int = 1024) -> ModelResult:
    """Measure adapter `name` (None: the base) on one engine; the adapter that was answering
    answers again afterwards."""
    from sftchat.training.evaluation import replay
    from sftchat.training.loss import LossFunction

    greedy = GenerationSettings(temperature=0)
    with engine.using(name) as info:
        template = engine.template
        encoded, ids = [], []
        for example in examples:
            try:
                encoded.append(encode_example(engine.tokenizer, template, example.to_record(),
                                              max_length))
                ids.append(example.id)
            except ExampleTooLongError:
                continue  # training skips it too: not something the adapter could learn
        with engine.slots.answering_context():
            report = replay(LossFunction(engine.model, engine.tokenizer.pad_token_id,
                                         engine.model.device), encoded) if encoded else None

        def answer(text: str, tokens: int, pin: Pin | None = None) -> str:
            settings = replace(greedy, max_new_tokens=tokens)
            if pin is None:
                return engine.generate(text, settings=settings).collect()
            return engine.generate(text, input=pin.input, history=pin.context,
                                   system=pin.system, settings=settings).collect()

        pin_answers = [answer(pin.instruction,
                              len(engine.tokenizer.encode(pin.response, add_special_tokens=False))
                              + PIN_EXTRA_TOKENS, pin)
                       for pin in pins]
        prompt_answers = [answer(prompt, PROMPT_TOKENS) for prompt in prompts]
    return ModelResult(
        name=name if name not in (None, "none") else None,
        curated=report.reproduced if report else 0, examples=len(encoded),
        not_reproduced=[i for i, ok in zip(ids, report.exact) if not ok] if report else [],
        pins_kept=sum(keeps(got, pin.response) for got, pin in zip(pin_answers, pins)),
        pin_answers=pin_answers, prompt_answers=prompt_answers,
        drift=((info.meta.get("metrics") or {}).get("drift") if info else None),
    )


def compare(engine, current: str | None, candidate: str, examples: Sequence[Example],
            pins: Sequence[Pin], prompts: Sequence[str] = (),
            max_length: int = 1024) -> Comparison:
    """`candidate` against `current` (None: the base model) on the same data."""
    if candidate in (None, "none"):
        raise AdapterError("the candidate must be an adapter; the base model can only be the "
                           "current one")
    return Comparison(
        current=evaluate(engine, current, examples, pins, prompts, max_length),
        candidate=evaluate(engine, candidate, examples, pins, prompts, max_length),
        pins=list(pins), prompts=list(prompts),
    )
