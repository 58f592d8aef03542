"""The SmolLM2 workspace of the real-model tests, trained once per test run and shared by
every module (and pytest-xdist worker) that asks for it: CURATED imported through the CLI,
the base model's greedy answers kept as rejected answers (pairs and bad answers), and one
`sftchat train` with default settings (adapter `taught`)."""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import sftchat
from conftest import shared_dir
from real_model_data import BAD_ONLY, CURATED, PAIRED, smollm2_gguf

GGUF = smollm2_gguf()


def trained_workspace(tmp_path_factory) -> Path:
    """A workspace with CURATED imported through the CLI and trained with `sftchat train`
    (once per test run, whichever workers run these tests)."""
    def build(workspace: Path) -> None:
        records = workspace / "curated.jsonl"
        records.write_text("".join(json.dumps({"instruction": q, "output": a},
                                              ensure_ascii=False) + "\n" for q, a in CURATED),
                           encoding="utf-8")
        sftchat(workspace, "--model", str(GGUF), "data", "import", str(records), check=True)
        _reject_base_answers(workspace)
        sftchat(workspace, "--model", str(GGUF), "train", "--name", "taught", check=True,
                timeout=1800)

    return shared_dir(tmp_path_factory, "smollm2", build)


def _reject_base_answers(workspace: Path) -> None:
    """The base model's greedy answers to PAIRED and BAD_ONLY, kept as rejected answers (and
    in bad.json, for the tests)."""
    import gc

    from sftchat.config import load_settings
    from sftchat.dataset.store import ExampleStore
    from sftchat.engine import ChatEngine

    engine = ChatEngine.from_settings(load_settings(workspace=str(workspace), model=str(GGUF)))
    base = dict(zip(PAIRED + BAD_ONLY, greedy_answers(engine, None, PAIRED + BAD_ONLY, 48)))
    del engine
    gc.collect()
    with ExampleStore(workspace / "data") as store:
        ids = {example.instruction: example.id for example in store.snapshot()}
        for question in PAIRED:
            store.add_rejected(question, base[question], source="cli", example_id=ids[question])
        for question in BAD_ONLY:
            store.add_rejected(question, base[question])   # source "bad", no replacement
    (workspace / "bad.json").write_text(json.dumps(base, ensure_ascii=False), encoding="utf-8")


def greedy_answers(engine, adapter, questions, max_new_tokens):
    """Greedy answers of `adapter` (None: the base) to `questions`, in one batch: on a CPU,
    decoding is bound by reading the weights, so a batch costs about what one answer does.
    test_real_model.py checks it against the chat's own path (`engine.generate`)."""
    from sftchat.training.anchors import greedy_batch

    engine.use_adapter(adapter)
    with engine.slots.answering_context():
        rows = greedy_batch(engine.model, engine.tokenizer, engine.template, questions,
                            max_new_tokens)
    return [engine.tokenizer.decode(answer, skip_special_tokens=True)
            for _prompt, answer, _ended in rows]
