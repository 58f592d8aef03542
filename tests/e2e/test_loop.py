"""The whole headless loop through the real command line: curate -> train -> ask.

Examples are added with `sftchat data add`, `sftchat train` runs as a subprocess with the
default settings for the built-in model, and `sftchat ask` (greedy) must give every curated
answer back exactly with `--adapter latest`, and not with `--adapter none`.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from cli_helpers import sftchat
from conftest import CURATED


def _ask(workspace, question, adapter):
    result = sftchat(workspace, "ask", question, "--adapter", adapter, "--temperature", "0", "--max-new-tokens", "40")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


def test_curated_answers_come_back_exactly(trained_workspace):
    jobs = [(question, adapter) for question, _ in CURATED for adapter in ("latest", "none")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(lambda job: _ask(trained_workspace, *job), jobs))
    replies = dict(zip(jobs, answers))
    for question, response in CURATED:
        assert replies[(question, "latest")] == response
        assert replies[(question, "none")] != response


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
