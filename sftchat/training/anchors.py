"""What the base model already answers: its own greedy answers to general prompts.

Fine-tuning on a dozen curated answers pulls a small model's weights far enough to spoil
unrelated answers ("What is photosynthesis?" -> "Ways to sustain human life on Earth.").
Two pools of general prompts, answered once by the base model (adapter off, greedy, through
the run's own template), guard against that:

- `REHEARSAL_PROMPTS`: trained on beside the curated examples (rehearsal, or
  self-distillation: the targets are the base's own tokens, so learning them again costs the
  model nothing it knew and anchors the shared weights where they were);
- `DRIFT_PROMPTS`: held out, never trained on; the drift figure of every run (see
  `evaluation.measure_drift`) is measured on them.

An answer is the base's first `ANSWER_TOKENS` tokens: enough to fix the start of an answer,
which is what drifts first. One that ends sooner keeps its end token (it also teaches where
to stop); one that is cut keeps none. Answers are generated in one batch and cached per
base model, template and pool, so only a model's first run pays for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

from sftchat.prompts import IGNORE_INDEX, EncodedExample, encode_prompt, stop_token_ids

ANSWER_TOKENS = 40
CACHE_VERSION = 1

REHEARSAL_PROMPTS = (
    "What is the boiling point of water at sea level?",
    "Explain what a noun is.",
    "Give three tips for staying healthy.",
    "What is the largest planet in our solar system?",
    "Describe the water cycle in one paragraph.",
    "Translate 'thank you' into German.",
    "What is 12 multiplied by 8?",
    "Write a haiku about autumn.",
    "Who wrote Romeo and Juliet?",
    "What does a CPU do in a computer?",
    "Suggest a name for a friendly golden retriever.",
    "How many continents are there?",
    "Explain the difference between weather and climate.",
    "Write a Python function that returns the square of a number.",
    "What is the chemical symbol for gold?",
    "Give me a synonym for 'happy'.",
    "Why is the sky blue?",
    "Summarize the plot of Cinderella in two sentences.",
    "What is the freezing point of water in Fahrenheit?",
    "List three primary colors.",
    "How do bees make honey?",
    "What is the capital of Japan?",
    "Write a short thank-you note to a teacher.",
    "What is gravity?",
    "Convert 5 kilometers to meters.",
    "Name a mammal that can fly.",
    "What are the three states of matter?",
    "Give an example of a renewable energy source.",
    "What language is spoken in Brazil?",
    "Explain what a verb is, with an example.",
    "How many days are in a leap year?",
    "What is the tallest mountain in the world?",
)

DRIFT_PROMPTS = (
    "What is photosynthesis?",
    "Translate 'good night' into Spanish.",
    "What is the capital of Italy?",
    "Explain what an atom is.",
    "Write a sentence using the word 'bright'.",
    "How many legs does a spider have?",
    "What is the opposite of 'cold'?",
    "Name the planet closest to the sun.",
    "Give two reasons to exercise regularly.",
    "What is the square root of 81?",
    "Describe a rainbow to a child.",
    "Which ocean is the largest?",
)


def _cache_file(cache_dir: Path, loaded, template: str, prompts: tuple[str, ...],
                max_new_tokens: int) -> Path:
    # Keyed on the base's content fingerprint (`models.identity`): two models of one shape
    # and file sizes but other weights never share answers. They depend on its arithmetic
    # too: 4-bit or not, and its compute dtype (bfloat16 or float32 by the CPU:
    # `loader.compute_dtype_for`).
    precision = [loaded.quantized, loaded.compute_dtype]
    key = hashlib.sha256(json.dumps(
        [CACHE_VERSION, loaded.identity.get("fingerprint"), precision, template, prompts,
         max_new_tokens],
        ensure_ascii=False).encode()).hexdigest()[:24]
    return cache_dir / "anchors" / f"{key}.json"


def greedy_batch(model, tokenizer, template: str, prompts: Sequence[str],
                 max_new_tokens: int) -> list[tuple[list[int], list[int], bool]]:
    """Greedy answers of `model` (as it is: with its active adapter, if any) to `prompts`, in
    one left-padded batch: [(prompt ids, answer ids, ended with a stop token)]. One batch
    costs about what one answer does where decoding is bound by reading the weights."""
    import torch

    encoded = [encode_prompt(tokenizer, template, prompt).ids for prompt in prompts]
    stops = stop_token_ids(template, tokenizer)
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention[row, width - len(ids):] = 1
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
            pad_token_id=pad, temperature=None, top_p=None, top_k=None)
    results = []
    for row, ids in enumerate(encoded):
        answer, ended = [], False
        for token in output[row, width:].tolist():
            answer.append(token)
            if token in stops:
                ended = True
                break
        results.append((ids, answer, ended))
    return results


def base_answers(loaded, template: str, prompts: tuple[str, ...],
                 cache_dir: Path | None = None,
                 max_new_tokens: int = ANSWER_TOKENS) -> list[EncodedExample]:
    """The base model's answers to `prompts` as training examples (prompt masked, answer
    learned), from the cache or generated now. Call it before any adapter is attached."""
    from sftchat.models.builtin import default_cache_dir

    path = _cache_file(cache_dir or default_cache_dir(), loaded, template, prompts,
                       max_new_tokens)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["answers"]
    except (OSError, ValueError, KeyError, TypeError):
        rows = [list(row) for row in greedy_batch(loaded.model, loaded.tokenizer, template,
                                                  prompts, max_new_tokens)]
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".anchors-", dir=path.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"prompts": list(prompts), "template": template, "answers": rows}, out)
        os.replace(temporary, path)
    return [EncodedExample(input_ids=prompt + answer,
                           labels=[IGNORE_INDEX] * len(prompt) + answer)
            for prompt, answer, _ended in rows]
