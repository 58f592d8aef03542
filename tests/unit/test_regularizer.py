"""Keeping what the model knew: the base's own answers, and the losses that hold them."""

from __future__ import annotations

import pytest

from sftchat.config import TrainingSettings
from sftchat.prompts import IGNORE_INDEX
from sftchat.training import anchors
from sftchat.training.loss import LossFunction
from sftchat.training.regularizer import AnchorLoss, Anchors, QuietAdapter
from sftchat.training.terms import Pass, StepFigures, pass_loss, prepare_references

PROMPTS = ("What is the capital of Japan?", "Give me a synonym for 'happy'.",
           "How many days are in a leap year?")


def anchor_pass(loss_function, anchors, terms, backward=False):
    """(the weighted loss of the next anchor step, its figures), through the loop's own pass."""
    step = anchors.next_step()
    figures = StepFigures([])
    sequences = [anchors.examples[i] for i in step.indices]
    with pass_loss(loss_function, Pass(sequences, anchors.reads(step, terms)), figures) as total:
        if backward:
            total.backward()
    return total, figures


@pytest.fixture()
def wrapped(trainable_builtin, tmp_path):
    from sftchat.training.trainer import _wrap_with_lora

    answers = anchors.base_answers(trainable_builtin, "alpaca", PROMPTS, cache_dir=tmp_path,
                                   max_new_tokens=12)
    model = _wrap_with_lora(trainable_builtin, TrainingSettings(rank=8, alpha=16), None)
    loss_function = LossFunction(model, trainable_builtin.tokenizer.pad_token_id, "cpu")
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
    anchors = Anchors(answers)
    term = AnchorLoss("distill", anchors, weight=1.0)
    prepare_references(loss_function, model, [term])
    assert [len(ids) for ids, _ in term.reference] == \
        [example.num_learned for example in answers]
    with torch.no_grad():
        _, start = anchor_pass(loss_function, anchors, [term])
    assert abs(start.anchor_loss) < 1e-4  # LoRA starts as the identity: nothing has moved
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    with torch.no_grad():
        _, moved = anchor_pass(loss_function, anchors, [term])
    assert moved.anchor_loss > 1e-3


def test_distillation_is_the_kl_from_the_bases_renormalised_top_k(wrapped):
    """Against a direct computation from full logits: KL(base top-k ‖ adapter on the same
    ids), both renormalised there, per answer token."""
    import torch

    answers, model, loss_function = wrapped
    anchors = Anchors(answers)
    term = AnchorLoss("distill", anchors, weight=2.0)
    prepare_references(loss_function, model, [term])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
        with model.disable_adapter():
            base = loss_function.learned_logits(answers).logits
        tuned = loss_function.learned_logits(answers).logits
        top = base.topk(64, dim=-1)
        base_logp = torch.log_softmax(top.values, dim=-1)
        tuned_logp = torch.log_softmax(tuned.gather(1, top.indices), dim=-1)
        expected = float((base_logp.exp() * (base_logp - tuned_logp)).sum()) / \
            sum(a.num_learned for a in answers)
        weighted, figures = anchor_pass(loss_function, anchors, [term])
    assert figures.anchor_loss == pytest.approx(expected, rel=1e-4) and expected > 1e-4
    assert float(weighted) == pytest.approx(2.0 * expected, rel=1e-4)


def test_rehearsal_is_cross_entropy_on_the_base_answers_and_cycles(wrapped):
    import torch

    answers, _model, loss_function = wrapped
    anchors = Anchors(answers)
    term = AnchorLoss("rehearsal", anchors, weight=0.5)
    with torch.no_grad():
        weighted, figures = anchor_pass(loss_function, anchors, [term])
        expected, _ = loss_function.loss_sum(answers)
    loss = figures.anchor_loss
    assert loss == pytest.approx(float(expected) / sum(a.num_learned for a in answers),
                                 rel=1e-4)
    assert float(weighted) == pytest.approx(0.5 * loss, rel=1e-5)
    assert figures.tokens == sum(len(a.input_ids) for a in answers)
    assert anchors.cursor == 0   # three anchors, PER_STEP 8: the cycle came round


def test_the_quiet_penalty_is_what_the_adapter_adds_to_each_layer_relative_to_the_layer(wrapped):
    """Zero while the adapter adds nothing; then Σ‖scaling·B·A·x‖² / (the layer's mean squared
    output with the adapter off) over layers and anchor tokens — checked against a direct
    computation — and its gradient reaches the LoRA weights."""
    import torch

    from sftchat.training.regularizer import lora_layers

    answers, model, loss_function = wrapped
    anchors = Anchors(answers)
    term = QuietAdapter(anchors, weight=2.0)
    term.attach(model)
    prepare_references(loss_function, model, [term])
    layers = lora_layers(model)
    assert len(term.scales) == len(layers) > 0 and min(term.scales) > 0
    with torch.no_grad():
        weighted, _ = anchor_pass(loss_function, anchors, [term])
    assert float(weighted) == 0.0   # lora_B starts at zero: nothing added yet
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    # Direct: hook each layer's LoRA output and its base output (adapter on), same anchors.
    step = anchors.next_step()
    anchors.cursor = 0
    added = []
    handles = [module.lora_B[name].register_forward_hook(
        lambda m, i, o, s=module.scaling[name]: added.append(float((o * s).pow(2).sum())))
        for module, name in layers]
    with torch.no_grad():
        loss_function.learned_logits([answers[i] for i in step.indices])
    for handle in handles:
        handle.remove()
    expected = sum(a / s for a, s in zip(added, term.scales)) / (len(layers) * step.tokens)
    model.zero_grad()
    weighted, _ = anchor_pass(loss_function, anchors, [term], backward=True)
    assert float(weighted.detach()) == pytest.approx(2.0 * expected, rel=1e-4) and expected > 0
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert all(g is not None for g in grads) and sum(float(g.norm()) for g in grads) > 0
