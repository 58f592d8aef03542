"""Training through 4-bit layers gives the right gradients on every CPU (issue 18).

bitsandbytes packs a `Linear4bit` weight into an inference-only layout (no backward) the first
time it runs in eval mode without grad — on CPUs with AVX512-BF16 only. The trainer makes such
passes (the base's anchor answers, the early-stop replay), so the check below does one first,
as the trainer does, then compares the LoRA gradients of the 4-bit model with those of the same
weights dequantized to fp32 in a plain model, to a stated tolerance.

Each test runs on every CPU path this machine can take (the `cpu_path` fixture,
tests/cpu_paths.py): `plain` (bitsandbytes' AVX512-BF16 detection forced off), `packed` (on a
CPU with the instruction set; skipped elsewhere, saying why) and `packed-emulated` (elsewhere:
the packing switched on, the packed kernel replaced by a PyTorch reference).

The control test proves the comparison can fail: without `keep_trainable` the eval-mode pass
packs the weights and the gradients come out wrong (if a bitsandbytes release gives the packed
kernel a backward, it fails, and `sftchat.models.cpu_4bit` can be revisited).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

# Relative error ‖g − g_ref‖ / ‖g_ref‖ allowed per LoRA tensor: both sides multiply the same
# fp32 weights, so only the order of floating-point operations differs (measured ~1e-6).
TOLERANCE = 1e-3


@pytest.fixture(autouse=True)
def float32_compute(monkeypatch):
    """Both sides in float32, whatever this CPU would take (`loader.compute_dtype_for`): this
    checks that gradients flow through each 4-bit path, which a tight tolerance needs; that
    training in bfloat16 is the model that answers is `tests/engine/test_precision.py`'s."""
    from sftchat.models.loader import CPU_DTYPE_ENV

    monkeypatch.setenv(CPU_DTYPE_ENV, "float32")

def _examples(tokenizer):
    from sftchat.prompts import encode_example

    records = [{"instruction": "What is the capital of France?", "response": "Paris."},
               {"instruction": "Name three primary colors.", "response": "Red, yellow, blue."},
               {"instruction": "Say hello.", "input": "in French", "response": "Bonjour !"}]
    return [encode_example(tokenizer, "alpaca", record, 256) for record in records]


def _lora_model(loaded, seed=0):
    """The trainer's LoRA wrapping, with non-zero weights on both LoRA matrices (a fresh
    lora_B is zero, which would leave lora_A's gradient zero on both sides)."""
    from sftchat.config import TrainingSettings
    from sftchat.training.trainer import _wrap_with_lora

    model = _wrap_with_lora(loaded, TrainingSettings(rank=8, alpha=16, dropout=0.0), None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def _lora_gradients(model, examples, eval_pass_first: bool):
    from sftchat.training.evaluation import replay
    from sftchat.training.loss import LossFunction, masked_loss_sum_of

    function = LossFunction(model, 0, "cpu")
    function.packed = False  # the plain padded forward: the reference has no packing variant
    if eval_pass_first:  # what the trainer's early-stop check does between steps
        model.eval()
        replay(function, examples)
    model.train()
    model.zero_grad()
    learned = sum(example.num_learned for example in examples)
    (masked_loss_sum_of(function.learned_logits(examples)) / learned).backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters()
            if "lora_" in name}


def _reference_gradients(loaded_4bit, examples):
    """The same 4-bit weights, dequantized to fp32 into an unquantized copy of the model, the
    same LoRA weights: its LoRA gradients."""
    import bitsandbytes.functional as bnb_functional
    from bitsandbytes.nn import Linear4bit

    from sftchat.models.loader import load_model

    plain = load_model("builtin", "cpu", quantize=False)
    dense = dict(plain.model.named_modules())
    with torch.no_grad():
        for name, module in loaded_4bit.model.named_modules():
            if isinstance(module, Linear4bit):
                target = dense[name.removesuffix(".base_layer")].weight  # inside LoRA or not
                weight, state = module.weight, module.weight.quant_state
                target.copy_(bnb_functional.dequantize_4bit(weight.data, state).float()
                             .reshape(target.shape))
    return _lora_gradients(_lora_model(plain), examples, eval_pass_first=False)


def _relative_errors(grads, reference):
    assert grads.keys() == reference.keys() and grads
    return {name: float((grads[name] - reference[name]).norm()
                        / reference[name].norm().clamp_min(1e-12)) for name in grads}


def test_lora_gradients_through_4bit_layers_match_fp32(cpu_path):
    from sftchat.models import cpu_4bit
    from sftchat.models.loader import load_model

    loaded = load_model("builtin", "cpu", quantize=True, for_training=True)
    examples = _examples(loaded.tokenizer)
    reference = _reference_gradients(loaded, examples)   # before any pass could pack
    model = _lora_model(loaded)
    grads = _lora_gradients(model, examples, eval_pass_first=True)
    errors = _relative_errors(grads, reference)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE, f"{cpu_path}: {worst} off by {errors[worst]:.2e}"
    assert cpu_4bit.packed_layers(model) == []


def test_without_the_fix_the_comparison_fails_on_packing_cpus(cpu_path):
    """The control: a model loaded for answering (bitsandbytes left to pack) gets wrong
    gradients after an eval pass on a packing path — the failure the test above guards."""
    from sftchat.models import cpu_4bit
    from sftchat.models.loader import load_model

    loaded = load_model("builtin", "cpu", quantize=True)
    examples = _examples(loaded.tokenizer)
    reference = _reference_gradients(loaded, examples)
    model = _lora_model(loaded)
    with pytest.warns(UserWarning) if cpu_path != "plain" else contextlib.nullcontext():
        grads = _lora_gradients(model, examples, eval_pass_first=True)
    errors = _relative_errors(grads, reference)
    if cpu_path == "plain":   # nothing packs: right without the fix too
        assert cpu_4bit.packed_layers(model) == [] and max(errors.values()) <= TOLERANCE
    else:
        assert cpu_4bit.packed_layers(model), "the eval pass should have packed the weights"
        assert max(errors.values()) > 0.1
        with pytest.raises(cpu_4bit.PackedWeightError, match="no backward"):
            cpu_4bit.check_trainable(model)


def test_keep_trainable_unpacks_what_inference_packed(cpu_path):
    """A model that answered (weights packed) and then trains: unpacked first, then right."""
    from sftchat.models import cpu_4bit
    from sftchat.models.loader import load_model

    loaded = load_model("builtin", "cpu", quantize=True)
    examples = _examples(loaded.tokenizer)
    model = _lora_model(loaded)
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([examples[0].input_ids]))
    packed = len(cpu_4bit.packed_layers(model))
    assert (packed > 0) == (cpu_path != "plain")
    assert cpu_4bit.keep_trainable(model) == packed
    cpu_4bit.check_trainable(model)
    reference = _reference_gradients(loaded, examples)
    errors = _relative_errors(_lora_gradients(model, examples, eval_pass_first=True), reference)
    assert max(errors.values()) <= TOLERANCE

