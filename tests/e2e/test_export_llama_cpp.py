"""Exports run in llama.cpp itself, on the built-in model: the merged GGUF (f16 and q8_0) and
the base GGUF with the LoRA GGUF answer the curated questions with the curated answers, and
llama.cpp tokenizes a two-turn prompt, rendered by the file's own chat template, into the
very ids sftchat trains on. SmolLM2's exports: tests/e2e/test_real_model.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CURATED
from export_runners import load_llama_cpp, needs_llama_cpp

pytestmark = needs_llama_cpp


@pytest.fixture(scope="module")
def exports(tmp_path_factory, trained_workspace) -> dict[str, Path]:
    from sftchat.config import load_settings
    from sftchat.export.exporter import export_adapter

    root = tmp_path_factory.mktemp("llama-cpp")
    settings = load_settings(workspace=str(trained_workspace))
    export_adapter(settings, "first", root / "f16", "gguf")
    export_adapter(settings, "first", root / "q8_0", "gguf", outtype="q8_0")
    export_adapter(settings, "first", root / "lora", "gguf-lora")
    return {"f16": root / "f16" / "first-f16.gguf", "q8_0": root / "q8_0" / "first-q8_0.gguf",
            "base": root / "lora" / "base-as-trained-f16.gguf",
            "lora": root / "lora" / "first-lora.gguf"}


@pytest.fixture(scope="module")
def tokenizer(builtin_model):
    return builtin_model.tokenizer


def _stop_ids(tokenizer, workspace: Path) -> list[int]:
    from sftchat.prompts import stop_token_ids

    meta = json.loads((workspace / "adapters/first/sftchat.json").read_text())
    return stop_token_ids(meta["template"], tokenizer)


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_the_merged_gguf_gives_the_curated_answers(exports, kind, tokenizer, trained_workspace):
    model = load_llama_cpp(exports[kind], stop_ids=_stop_ids(tokenizer, trained_workspace))
    answers = [model.answer(question) for question, _ in CURATED]
    assert answers == [answer for _, answer in CURATED]


def test_the_base_gguf_with_the_lora_gguf_gives_the_curated_answers(exports, tokenizer,
                                                                    trained_workspace):
    model = load_llama_cpp(exports["base"], exports["lora"],
                           stop_ids=_stop_ids(tokenizer, trained_workspace))
    answers = [model.answer(question) for question, _ in CURATED]
    assert answers == [answer for _, answer in CURATED]
    without = load_llama_cpp(exports["base"], stop_ids=_stop_ids(tokenizer, trained_workspace))
    assert [without.answer(question) for question, _ in CURATED[:1]] != [CURATED[0][1]]


def test_llama_cpp_tokenizes_a_conversation_as_sftchat_trains_on_it(exports, tokenizer,
                                                                    trained_workspace):
    from sftchat.prompts import Turn, encode_prompt

    meta = json.loads((trained_workspace / "adapters/first/sftchat.json").read_text())
    model = load_llama_cpp(exports["f16"])
    (q1, a1), (q2, _) = CURATED[:2]
    for system in ("", "Answer in one sentence."):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": q1}, {"role": "assistant", "content": a1},
            {"role": "user", "content": q2}]
        expected = encode_prompt(tokenizer, meta["template"], q2, history=[Turn(q1, a1)],
                                 system=system).ids
        assert model.prompt_ids(messages) == expected
