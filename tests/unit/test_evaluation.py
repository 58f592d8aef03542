"""What a run learned and changed: exact replay from one forward pass, and drift."""

from __future__ import annotations

import pytest
import torch

from conftest import with_lora

from sftchat.prompts import encode_example
from sftchat.training.evaluation import curated_replay, measure_drift, replay
from sftchat.training.head import LearnedLogits
from sftchat.training.loss import LossFunction, per_example_errors


def test_per_example_errors_counts_misses_and_the_smallest_margin():
    logits = torch.tensor([[5.0, 1.0, 0.0],    # example 0: target 0 wins by 4
                           [0.0, 2.0, 1.5],    # example 0: target 1 wins by 0.5
                           [3.0, 0.0, 0.0],    # example 1: target 2 loses by 3
                           [0.0, 0.0, 1.0]])   # example 1: target 2 wins by 1
    targets = torch.tensor([0, 1, 2, 2])
    owners = torch.tensor([0, 0, 1, 1])
    out = LearnedLogits(targets, owners, tokens=4, logits_made=logits)
    errors, margins = per_example_errors(out, 2)
    assert errors.tolist() == [0, 1]
    assert margins.tolist() == pytest.approx([0.5, -3.0])


@pytest.fixture()
def lora_model(fresh_builtin):
    return with_lora(fresh_builtin, "eval")


def _examples(loaded, count):
    return [encode_example(loaded.tokenizer, "alpaca",
                           {"instruction": f"Question {i}?", "response": f"Answer {i}."}, 256)
            for i in range(count)]


def test_replay_agrees_with_greedy_generation(trained_workspace, fresh_builtin):
    from conftest import CURATED
    from sftchat.config import GenerationSettings
    from sftchat.engine import ChatEngine

    engine = ChatEngine(fresh_builtin, "alpaca", trained_workspace / "adapters")
    engine.use_adapter("first")
    cases = [*CURATED, ("What is the capital of France?", "London.")]  # one it was not taught
    examples = [encode_example(fresh_builtin.tokenizer, "alpaca",
                               {"instruction": q, "response": r}, 256) for q, r in cases]
    loss_function = LossFunction(engine.model, fresh_builtin.tokenizer.pad_token_id, "cpu")
    with engine.slots.answering_context():   # (nothing else runs on this engine meanwhile)
        report = replay(loss_function, examples)
    greedy = GenerationSettings(max_new_tokens=40, temperature=0)
    generated = [engine.generate(q, settings=greedy).collect() == r for q, r in cases]
    assert report.exact == generated == [True] * len(CURATED) + [False]
    assert min(report.margins[:-1]) > 0 > report.margins[-1]


def test_a_large_dataset_is_replayed_on_a_fixed_sample(lora_model, monkeypatch):
    from sftchat.training import evaluation

    loaded, _, loss_function = lora_model
    monkeypatch.setattr(evaluation, "REPLAY_SAMPLE", 3)
    examples = _examples(loaded, 5)
    ids = [10 + i for i in range(5)]
    first = curated_replay(loss_function, examples, ids, seed=1).to_dict()
    assert first["examples"] == 3 and first["sampled_from"] == 5
    assert set(first["not_reproduced"]) <= {10, 11, 12, 13, 14}
    assert curated_replay(loss_function, examples, ids, seed=1).to_dict() == first
    whole = curated_replay(loss_function, examples[:3], ids[:3], seed=1).to_dict()
    assert whole["examples"] == 3 and "sampled_from" not in whole


def test_drift_is_nothing_for_an_untrained_adapter_and_grows_when_it_moves(lora_model):
    loaded, model, loss_function = lora_model
    anchors = _examples(loaded, 2)
    still = measure_drift(loss_function, model, anchors)
    assert still["kl_per_token"] == pytest.approx(0, abs=1e-4)
    assert still["perplexity_ratio"] == pytest.approx(1.0, abs=1e-3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    moved = measure_drift(loss_function, model, anchors)
    assert moved["kl_per_token"] > 1e-3 and moved["perplexity_ratio"] != 1.0
