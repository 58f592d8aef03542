"""Issue 13, item 5: a run that cannot fit on the GPU beside the chat's model is refused
before its first step, with what to change; the status line shows the GPU's memory.

The estimate is pure arithmetic on a model config and is tested as such. The refusal needs a
GPU's free memory: no GPU runs here, so `torch.cuda.mem_get_info` is replaced (the only fake)
and the trainer's check runs on a run prepared as `setup` prepares it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import LlamaConfig

from sftchat.config import TrainingSettings
from sftchat.prompts import IGNORE_INDEX, EncodedExample
from sftchat.training.memory import (GIB, check_fits, estimate, gpu_memory_text,
                                     lora_parameters)
from sftchat.training.schedule import StepPlan

LLAMA_3_8B = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)


def test_lora_parameters_match_the_published_count_for_llama_3_8b():
    # r=16 on every linear layer of Llama-3-8B: 41,943,040 trainable parameters (PEFT's
    # print_trainable_parameters for this configuration).
    assert lora_parameters(LLAMA_3_8B, 16) == 41_943_040


def test_the_estimate_grows_with_the_batch_and_checkpointing_saves_activations():
    small = estimate(LLAMA_3_8B, 16, tokens=4 * 512, learned_tokens=4 * 64,
                     gradient_checkpointing=False)
    large = estimate(LLAMA_3_8B, 16, tokens=8 * 1024, learned_tokens=8 * 128,
                     gradient_checkpointing=False)
    saved = estimate(LLAMA_3_8B, 16, tokens=8 * 1024, learned_tokens=8 * 128,
                     gradient_checkpointing=True)
    assert small.total < large.total
    assert saved.activation_bytes < large.activation_bytes / 10
    assert saved.lora_bytes == large.lora_bytes == 41_943_040 * 16
    # The head in chunks (one chunk of fp32 logits and their softmax at a time, 130 of the
    # 1,024 learned positions for a 128k vocabulary) and the hidden states at the learned
    # positions with their gradient: not 1,024 positions of full-vocabulary logits.
    rows = (1 << 24) // 128256
    assert large.logit_bytes == rows * 128256 * 8 + 8 * 128 * 4096 * 2 * 2
    assert large.logit_bytes < 8 * 128 * 128256 * 8 / 5
    assert "GiB (LoRA and optimizer" in large.describe()


def test_the_float32_copies_of_a_bfloat16_run_and_the_quiet_penalty_are_counted():
    """PEFT's float32 cast of each LoRA input (bfloat16 base only) and the quiet penalty's
    float32 LoRA outputs on the anchors: per token and layer, in bytes."""
    hidden, intermediate, q_width, kv_width = 4096, 14336, 4096, 1024
    shape = dict(learned_tokens=64, gradient_checkpointing=False)
    bf16 = estimate(LLAMA_3_8B, 16, tokens=512, compute_bytes=2, **shape)
    fp32 = estimate(LLAMA_3_8B, 16, tokens=512, compute_bytes=4, **shape)
    plain = (6 * hidden + q_width + 2 * kv_width + 4 * intermediate)
    assert fp32.activation_bytes == 512 * 32 * plain * 4          # no cast: already float32
    assert bf16.activation_bytes == 512 * 32 * (plain * 2 + (5 * hidden + q_width
                                                             + intermediate) * 4)
    quiet = (q_width + 2 * kv_width + 2 * hidden + 2 * intermediate) * 4
    anchors = estimate(LLAMA_3_8B, 16, tokens=512, compute_bytes=4, quiet_tokens=512, **shape)
    assert anchors.activation_bytes == 512 * 32 * (plain * 4 + quiet)
    # The largest pass decides: a short anchor batch under a long curated one adds nothing.
    assert estimate(LLAMA_3_8B, 16, tokens=512, compute_bytes=4, quiet_tokens=64,
                    **shape).activation_bytes == fp32.activation_bytes


def test_check_fits_says_what_to_change():
    needed = estimate(LLAMA_3_8B, 16, tokens=8 * 1024, learned_tokens=1024,
                      gradient_checkpointing=False)
    assert check_fits(needed, needed.total + 1, 8, 1024) is None
    message = check_fits(needed, 2 * GIB, 8, 1024)
    assert message.startswith("this run needs about ") and "2.0 GiB free" in message
    for advice in ("--batch-size (now 8", "--max-length (now 1024)",
                   "--gradient-checkpointing on", "CUDA_VISIBLE_DEVICES",
                   "--nproc 2"):
        assert advice in message


def _prepared_run(device: str):
    """A run as `trainer.setup` leaves it, on a Llama-3-8B-shaped model (no weights)."""
    examples = [EncodedExample(input_ids=list(range(900)),
                               labels=[IGNORE_INDEX] * 800 + list(range(100)))
                for _ in range(8)]
    model = SimpleNamespace(config=LLAMA_3_8B, device=device)
    return SimpleNamespace(
        loaded=SimpleNamespace(device=device, model=model, compute_dtype="bfloat16"),
        encoded=examples,
        plans=[StepPlan(epoch=0, micro_batches=[list(range(8))])], anchors=None,
        anchor_terms=[],
        preferences=None,
        schedule=SimpleNamespace(batch_size=8), source=None,
        lora_shape={"rank": 16, "alpha": 32, "dropout": 0.0})


def test_the_trainer_refuses_a_run_that_does_not_fit_beside_the_chat(monkeypatch):
    import torch

    from sftchat.training import trainer

    free = {"bytes": 3 * GIB}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"],
                                                                          141 * GIB))
    training = TrainingSettings(gradient_checkpointing="off")

    def check(device):
        run = _prepared_run(device)
        trainer._check_gpu_memory(run, training, trainer.estimate_memory(run, training))

    with pytest.raises(trainer.TrainingError, match="this run needs about .* 3.0 GiB free"):
        check("cuda")
    free["bytes"] = 120 * GIB  # an empty H200 (141 GB): it fits
    check("cuda")
    # On a CPU there is nothing to check (and no CUDA call is made).
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: pytest.fail("called"))
    check("cpu")


def test_the_status_line_figure():
    assert gpu_memory_text(free_bytes=60 * GIB, total_bytes=80 * GIB) == "GPU 20.0/80.0 GiB"
