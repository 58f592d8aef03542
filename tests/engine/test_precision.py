"""One precision: the model the chat, the review and `eval` run is the model the trainer
trained. With a GPU's compute dtype (bfloat16) the trainer once cast every norm, the
embeddings and the head to float32 (PEFT's `prepare_model_for_kbit_training`) while the chat
ran them in bfloat16, so the review measured a model that was not the one trained.

No GPU here: the GPU's dtype is asked of the CPU (`SFTCHAT_CPU_DTYPE=bfloat16`, what a CPU
with AVX512-BF16 takes by itself; bitsandbytes' CPU path computes in it for real), on the plain
4-bit path (the packed kernel is another kernel, not another precision: issue 31)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from conftest import CURATED
from cpu_paths import cpu_has_packed_kernel, session_path

from sftchat.adapters import registry
from sftchat.config import TrainingSettings
from sftchat.engine import ChatEngine
from sftchat.models import loader
from sftchat.prompts import encode_example
from sftchat.training import trainer
from sftchat.training.loss import LossFunction


@pytest.fixture()
def bfloat16_plain(monkeypatch, builtin_cache):
    from cpu_paths import force_cpu_path

    monkeypatch.setenv(loader.CPU_DTYPE_ENV, "bfloat16")
    yield from force_cpu_path("plain", monkeypatch)


def test_the_trainers_model_is_the_chats_model(bfloat16_plain, tmp_path):
    import torch

    training = TrainingSettings(rank=8, alpha=16)
    trained = loader.load_model("builtin", "cpu", quantize=True, for_training=True)
    model = trainer._wrap_with_lora(trained, training, None)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    folder = tmp_path / "adapters" / "probe"
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / registry.META_FILE).write_text(
        '{"format": 1, "name": "probe", "template": "alpaca", "base_model": %s}'
        % __import__("json").dumps(trained.identity), encoding="utf-8")
    examples = [encode_example(trained.tokenizer, "alpaca",
                               {"instruction": q, "input": "", "output": a}, 256)
                for q, a in CURATED]
    model.train()   # as the trainer measures its loss (dropout is 0: train = eval)
    with torch.no_grad():
        trainer_loss, _ = LossFunction(model, trained.tokenizer.pad_token_id,
                                       "cpu").loss_sum(examples)

    engine = ChatEngine(loader.load_model("builtin", "cpu", quantize=True), "alpaca",
                        tmp_path / "adapters")
    assert engine.use_adapter("probe").name == "probe"
    chat_model = engine.model
    with torch.no_grad():
        chat_loss, _ = LossFunction(chat_model, trained.tokenizer.pad_token_id,
                                    "cpu").loss_sum(examples)
    assert float(chat_loss) == float(trainer_loss)
    # Module by module: the same dtypes (bfloat16 base, float32 LoRA).
    def dtypes(peft_model):   # LoRA parameters by layer (the engine names its slots)
        return {re.sub(r"\.(lora_[AB])\.[^.]+\.", r".\1.", name): parameter.dtype
                for name, parameter in peft_model.named_parameters()}

    chat_dtypes, trained_dtypes = dtypes(chat_model), dtypes(model)
    assert trained_dtypes == chat_dtypes
    assert {d for n, d in trained_dtypes.items() if "lora_" in n} == {torch.float32}
    assert trained_dtypes["base_model.model.model.norm.weight"] == torch.bfloat16
    assert trained.compute_dtype == "bfloat16"


def test_the_real_defaults_keep_the_compute_dtype(bfloat16_plain):
    """The recipe every real model takes wraps the base without casting it."""
    import torch

    loaded = loader.load_model("builtin", "cpu", quantize=True, for_training=True)
    before = {name: p.dtype for name, p in loaded.model.named_parameters()}
    model = trainer._wrap_with_lora(
        loaded, dataclasses.replace(TrainingSettings(), gradient_checkpointing="on"), None)
    after = {name.removeprefix("base_model.model.").replace(".base_layer", ""): p.dtype
             for name, p in model.named_parameters() if "lora_" not in name}
    assert after == before and torch.float32 not in {
        d for n, d in after.items() if "norm" in n or "embed" in n}


@pytest.mark.skipif(session_path() != "native",
                    reason="SFTCHAT_TEST_CPU_PATH pretends another CPU; this checks the real one")
def test_the_cpu_computes_in_bfloat16_only_where_it_is_native(monkeypatch):
    monkeypatch.delenv(loader.CPU_DTYPE_ENV, raising=False)
    native = cpu_has_packed_kernel()
    assert loader.compute_dtype_for("cpu") == ("bfloat16" if native else "float32")
    assert loader.compute_dtype_for("cuda") == "bfloat16"


@pytest.mark.parametrize("forced", ["float32", "bfloat16"])
def test_the_cpu_dtype_can_be_forced_and_a_model_loads_in_it(monkeypatch, forced,
                                                              builtin_cache):
    import torch

    monkeypatch.setenv(loader.CPU_DTYPE_ENV, forced)
    loaded = loader.load_model("builtin", "cpu", quantize=True)
    assert loaded.compute_dtype == forced
    assert loaded.model.get_input_embeddings().weight.dtype == getattr(torch, forced)
    assert loader.compute_dtype_for("cuda") == "bfloat16"   # a GPU's is never forced


def test_a_wrong_cpu_dtype_is_one_clear_message(monkeypatch):
    monkeypatch.setenv(loader.CPU_DTYPE_ENV, "fp8")
    with pytest.raises(loader.ModelLoadError, match="SFTCHAT_CPU_DTYPE='fp8'.*float32"):
        loader.compute_dtype_for("cpu")
