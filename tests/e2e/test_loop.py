"""The whole headless loop through the real command line: curate -> train -> ask.

Examples are added with `sftchat data add`, `sftchat train` runs as a subprocess with the
default settings for the built-in model, and greedy answers must give every curated answer
back exactly with `--adapter latest`, and not with `--adapter none`: `sftchat ask` for one of
them, the engine `ask` runs (in-process) for all.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from cli_helpers import sftchat
from conftest import CURATED

from sftchat.config import GenerationSettings, load_settings
from sftchat.engine import ChatEngine


def _ask(workspace, question, adapter):
    result = sftchat(workspace, "ask", question, "--adapter", adapter, "--temperature", "0",
                     "--max-new-tokens", "40")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


def test_curated_answers_come_back_exactly(trained_workspace):
    # Through the command line once, with the adapter and without (two processes at once)...
    question, response = CURATED[0]
    with ThreadPoolExecutor(max_workers=2) as pool:
        latest, none = pool.map(lambda adapter: _ask(trained_workspace, question, adapter),
                                ("latest", "none"))
    assert latest == response and none != response
    # ...and every curated answer in-process, through the engine `ask` runs, with the same
    # settings (one model load instead of one per answer).
    engine = ChatEngine.from_settings(load_settings(workspace=str(trained_workspace)))
    greedy = GenerationSettings(max_new_tokens=40, temperature=0)
    for adapter in ("latest", "none"):
        engine.use_adapter(adapter)
        answers = [engine.generate(q, settings=greedy).collect() for q, _ in CURATED]
        reproduced = [got == want for got, (_, want) in zip(answers, CURATED)]
        assert reproduced == [adapter == "latest"] * len(CURATED), (adapter, answers)


def test_published_adapter_describes_itself(trained_workspace):
    folder = trained_workspace / "adapters" / "first"
    for name in ("adapter_config.json", "adapter_model.safetensors", "sftchat.json",
                 "train.jsonl"):
        assert (folder / name).is_file(), name
    meta = json.loads((folder / "sftchat.json").read_text())
    assert meta["base_model"]["model"] == "builtin"
    assert len(meta["base_model"]["fingerprint"]) == 64
    assert meta["template"] == "alpaca"
    assert meta["quantization"]["quant_type"] == "nf4"
    assert meta["quantization"]["double_quant"] is True
    assert meta["dataset"]["examples"] == len(CURATED)
    assert meta["dataset"]["example_ids"] == list(range(1, len(CURATED) + 1))
    assert len(meta["dataset"]["snapshot_sha256"]) == 64
    assert meta["metrics"]["steps"] == len(meta["metrics"]["loss_curve"])
    assert meta["metrics"]["final_loss"] < meta["metrics"]["loss_curve"][0]
    assert set(meta["lora"]["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    snapshot = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    assert [(r["instruction"], r["output"]) for r in snapshot] == CURATED
    # No staging or trash folders are left beside it.
    assert [p.name for p in (trained_workspace / "adapters").iterdir()] == ["first"]


def test_adapters_list_shows_the_trained_adapter(trained_workspace):
    result = sftchat(trained_workspace, "adapters", "list", "--json", check=True)
    (row,) = json.loads(result.stdout)
    assert row["name"] == "first" and row["examples"] == len(CURATED)
    assert row["base_model"] == "builtin"
