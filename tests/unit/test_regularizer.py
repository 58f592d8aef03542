"""Keeping what the model knew: the base's own answers, and the losses that hold them."""

from __future__ import annotations

import pytest

from sftchat.config import TrainingSettings
from sftchat.prompts import IGNORE_INDEX
from sftchat.training import anchors
from sftchat.training.loss import LossFunction
from sftchat.training.regularizer import Regularizer

PROMPTS = ("What is the capital of Japan?", "Give me a synonym for 'happy'.",
           "How many days are in a leap year?")


@pytest.fixture()
def wrapped(fresh_builtin, tmp_path):
    from sftchat.training.trainer import _wrap_with_lora

    answers = anchors.base_answers(fresh_builtin, "alpaca", PROMPTS, cache_dir=tmp_path,
                                   max_new_tokens=12)
    model = _wrap_with_lora(fresh_builtin, TrainingSettings(rank=8, alpha=16), None)
    loss_function = LossFunction(model, fresh_builtin.tokenizer.pad_token_id, "cpu")
    return answers, model, loss_function


def test_base_answers_are_the_base_models_greedy_tokens_and_are_cached(fresh_builtin,
                                                                       tmp_path, monkeypatch):
    from sftchat.config import GenerationSettings
    from sftchat.engine import ChatEngine

    answers = anchors.base_answers(fresh_builtin, "alpaca", PROMPTS, cache_dir=tmp_path,
                                   max_new_tokens=12)
    engine = ChatEngine(fresh_builtin, "alpaca")
    for prompt, example in zip(PROMPTS, answers):
        learned = [t for t, label in zip(example.input_ids, example.labels)
                   if label != IGNORE_INDEX]
        assert 0 < len(learned) <= 12
        text = engine.generate(prompt, settings=GenerationSettings(
            max_new_tokens=12, temperature=0)).collect()
        assert fresh_builtin.tokenizer.decode(learned, skip_special_tokens=True) \
            .startswith(text[:8])
    # A second call reads the cache instead of generating.
    monkeypatch.setattr(anchors, "greedy_batch", lambda *a, **k: pytest.fail("regenerated"))
    again = anchors.base_answers(fresh_builtin, "alpaca", PROMPTS, cache_dir=tmp_path,
                                 max_new_tokens=12)
    assert [a.input_ids for a in again] == [a.input_ids for a in answers]


def test_distillation_is_zero_for_the_base_and_grows_as_the_adapter_moves(wrapped):
    import torch

    answers, model, loss_function = wrapped
    regularizer = Regularizer("distill", answers, weight=1.0)
    regularizer.prepare(loss_function, model)
    assert [len(ids) for ids, _ in regularizer.reference] == \
        [example.num_learned for example in answers]
    with torch.no_grad():
        _, start, _ = regularizer.step_loss(loss_function)
    assert abs(start) < 1e-4  # LoRA starts as the identity: nothing has moved
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    with torch.no_grad():
        _, moved, _ = regularizer.step_loss(loss_function)
    assert moved > 1e-3


def test_rehearsal_is_cross_entropy_on_the_base_answers_and_cycles(wrapped):
    import torch

    answers, _model, loss_function = wrapped
    regularizer = Regularizer("rehearsal", answers, weight=0.5)
    with torch.no_grad():
        weighted, loss, tokens = regularizer.step_loss(loss_function)
        expected, _ = loss_function.loss_sum(answers)
    assert loss == pytest.approx(float(expected) / sum(a.num_learned for a in answers),
                                 rel=1e-4)
    assert float(weighted) == pytest.approx(0.5 * loss, rel=1e-5)
    assert tokens == sum(len(a.input_ids) for a in answers)


def test_the_quiet_penalty_is_what_the_adapter_adds_to_each_layer_relative_to_the_layer(wrapped):
    """Zero while the adapter adds nothing; then Σ‖scaling·B·A·x‖² / (the layer's mean squared
    output with the adapter off) over layers and anchor tokens — checked against a direct
    computation — and its gradient reaches the LoRA weights."""
    import torch

    from sftchat.training.regularizer import lora_layers

    answers, model, loss_function = wrapped
    regularizer = Regularizer("rehearsal", answers, weight=0.0, quiet_weight=2.0)
    regularizer.prepare(loss_function, model)
    layers = lora_layers(model)
    assert len(regularizer.scales) == len(layers) > 0 and min(regularizer.scales) > 0
    with torch.no_grad():
        weighted, _, _ = regularizer.step_loss(loss_function)
    assert float(weighted) == 0.0   # lora_B starts at zero: nothing added yet
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    # Direct: hook each layer's LoRA output and its base output (adapter on), same anchors.
    step = regularizer.next_step()
    regularizer.cursor = 0
    added = []
    handles = [module.lora_B[name].register_forward_hook(
        lambda m, i, o, s=module.scaling[name]: added.append(float((o * s).pow(2).sum())))
        for module, name in layers]
    with torch.no_grad():
        loss_function.learned_logits([answers[i] for i in step.indices])
    for handle in handles:
        handle.remove()
    expected = sum(a / s for a, s in zip(added, regularizer.scales)) / (len(layers) * step.tokens)
    model.zero_grad()
    weighted, _, _ = regularizer.step_loss(loss_function)
    assert float(weighted.detach()) == pytest.approx(2.0 * expected, rel=1e-4) and expected > 0
    weighted.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert all(g is not None for g in grads) and sum(float(g.norm()) for g in grads) > 0
