"""The GPU path (issue 13, item 4): 4-bit NF4 on CUDA with bf16 compute, generation, training
a few steps, the hot-swap of what it trained, the memory estimate against what a run really
used, and the out-of-memory message.

Marked `cuda`: skipped on a machine without a GPU (conftest), run on one by
benchmarks/gpu_check.sh. Everything is real — the built-in model on the GPU, the real
trainer (in-process, so that the test can set a memory limit on the process that trains).
"""

from __future__ import annotations

import json

import pytest

from cli_helpers import sftchat
from conftest import CURATED
from sftchat.config import GenerationSettings
from sftchat.dataset.store import ExampleStore

pytestmark = pytest.mark.cuda

GREEDY = GenerationSettings(max_new_tokens=24, temperature=0)


@pytest.fixture(scope="module")
def gpu_workspace(tmp_path_factory, builtin_cache):
    """The curated examples trained on CUDA into `gpu`, by the real trainer."""
    workspace = tmp_path_factory.mktemp("gpu") / "ws"
    with ExampleStore(workspace / "data") as store:
        for instruction, response in CURATED:
            store.add(instruction, response)
    sftchat(workspace, "--device", "cuda", "train", "--name", "gpu", check=True,
            in_process=True)
    return workspace


def test_the_base_loads_in_4_bit_on_the_gpu_with_bf16_compute(builtin_cache):
    import torch

    from sftchat.models.loader import load_model

    loaded = load_model("builtin", "cuda", quantize=True)
    assert loaded.device == "cuda" and loaded.compute_dtype == "bfloat16"
    linear = loaded.model.model.layers[0].self_attn.q_proj
    assert type(linear).__name__ == "Linear4bit"
    assert linear.weight.device.type == "cuda" and linear.weight.dtype == torch.uint8
    assert linear.compute_dtype == torch.bfloat16


def test_training_on_the_gpu_records_the_device_and_its_peak_memory(gpu_workspace):
    meta = json.loads((gpu_workspace / "adapters" / "gpu" / "sftchat.json").read_text())
    assert meta["device"] == "cuda"
    assert meta["quantization"]["quant_type"] == "nf4"
    assert meta["quantization"]["compute_dtype"] == "bfloat16"
    assert meta["metrics"]["peak_gpu_memory_mb"] > 0
    assert meta["metrics"]["replay"]["reproduced"] == len(CURATED)


def test_the_engine_generates_on_the_gpu_and_hot_swaps_what_it_trained(gpu_workspace):
    from sftchat.engine import ChatEngine
    from sftchat.models.loader import load_model

    engine = ChatEngine(load_model("builtin", "cuda", quantize=True), "auto",
                        gpu_workspace / "adapters")
    question, answer = CURATED[0]
    before = engine.generate(question, settings=GREEDY).collect()
    assert before  # the base answers something (random weights: not the curated answer)
    swap = engine.use_adapter("gpu")
    assert swap.name == "gpu"
    assert engine.generate(question, settings=GREEDY).collect() == answer
    engine.use_adapter("none")
    assert engine.generate(question, settings=GREEDY).collect() == before


def test_the_memory_estimate_covers_what_a_run_used(gpu_workspace, monkeypatch):
    """The estimate the trainer checks before its first step (training.memory) is at least
    what the run then took beside the loaded model (the allocator's peak, which the run
    records beside its estimate), and not wildly more (for the real-size shape, RESULTS §2)."""
    import json

    sftchat(gpu_workspace, "--device", "cuda", "train", "--name", "measured", "--max-steps",
            "3", check=True, in_process=True)
    metrics = json.loads((gpu_workspace / "adapters" / "measured" / "sftchat.json")
                         .read_text())["metrics"]
    used, estimate = metrics["memory_used_mb"], metrics["memory_estimate_mb"]
    assert used <= estimate <= 20 * max(used, 1), metrics


def test_running_out_of_gpu_memory_fails_with_one_clear_message(gpu_workspace, monkeypatch):
    """A deliberately tiny memory limit on the training process, set once the model is
    loaded: the real allocator runs out in the first step."""
    import torch

    from sftchat.training import trainer

    def tiny_limit(run, training, needed):
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(
            (torch.cuda.memory_allocated() + 2**20) / total)

    monkeypatch.setattr(trainer, "_check_gpu_memory", tiny_limit)
    try:
        result = sftchat(gpu_workspace, "--device", "cuda", "train", "--name", "oom",
                         "--batch-size", "4", "--max-steps", "2", in_process=True)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("sftchat: error: CUDA ran out of memory at batch "
                                            "size 4")
    assert "retry with a smaller --batch-size" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (gpu_workspace / "adapters" / "oom").exists()
