"""Training batches: step plans, padding-free packing, and that packing changes no loss."""

from __future__ import annotations

import pytest
import torch

from sftchat.prompts import IGNORE_INDEX, encode_example
from sftchat.training import batching
from sftchat.training.batching import pack, pack_rows
from sftchat.training.schedule import plan_steps
from sftchat.training.fast_dropout import FastDropout, use_fast_dropout

RECORDS = [
    {"instruction": "Name a colour.", "input": "", "response": "Blue."},
    {"instruction": "Summarise this text in one line, please, for the report " * 6,
     "input": "Cats sleep most of the day.", "response": "Cats nap a lot."},
    {"instruction": "Count to five.", "input": "", "response": "1, 2, 3, 4, 5 — done!"},
    {"instruction": "Say hello in Japanese.", "input": "", "response": "こんにちは"},
    {"instruction": "Write a haiku about rain " * 12, "input": "",
     "response": "Soft rain on the roof / the kettle sings its one note / tea, and then some sleep"},
]


def test_plans_cover_every_example_once_per_epoch():
    plans = plan_steps(10, batch_size=3, grad_accum=2, epochs=2, max_steps=None, seed=1)
    for epoch in (0, 1):
        seen = [i for plan in plans if plan.epoch == epoch
                for batch in plan.micro_batches for i in batch]
        assert sorted(seen) == list(range(10))
    assert all(len(plan.micro_batches) <= 2 for plan in plans)
    assert len(plan_steps(10, 3, 2, 2, max_steps=5, seed=1)) == 5


def test_first_fit_decreasing_respects_capacity_and_keeps_everything():
    lengths = [90, 10, 50, 60, 40, 30, 100, 5]
    rows = pack_rows(lengths, capacity=100)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 100 for row in rows)
    assert len(rows) == 4  # 385 tokens need at least 4 rows of 100


def _examples(tokenizer):
    return [encode_example(tokenizer, "alpaca", record) for record in RECORDS]


def test_packed_rows_restart_positions_and_keep_labels(builtin_model, monkeypatch):
    monkeypatch.setattr(batching, "MIN_ROW_TOKENS", 64)
    examples = _examples(builtin_model.tokenizer)
    batch = pack(examples, pad_id=builtin_model.tokenizer.pad_token_id, device="cpu")
    assert batch.tokens == sum(len(e.input_ids) for e in examples)
    assert batch.input_ids.shape[0] < len(examples), "several sequences share a row"
    # Every sequence appears intact, with positions 0..n-1, and its labels unchanged.
    found = 0
    for row_ids, row_pos, row_labels in zip(batch.input_ids.tolist(), batch.position_ids.tolist(),
                                            batch.labels.tolist()):
        starts = [i for i, p in enumerate(row_pos) if p == 0] + [len(row_pos)]
        for start, end in zip(starts, starts[1:]):
            segment = row_ids[start:end]
            assert row_pos[start:end] == list(range(end - start))
            for example in examples:
                if segment == example.input_ids:
                    assert row_labels[start:end] == example.labels
                    found += 1
    assert found == len(examples)
    learned = (batch.labels != IGNORE_INDEX).sum().item()
    assert learned == sum(e.num_learned for e in examples)


@pytest.mark.parametrize("quantize, tolerance", [(False, 1e-4), (True, 2e-2)])
def test_packed_loss_equals_padded_loss(builtin_cache, quantize, tolerance):
    """The optimisation changes no number: same summed loss, and same gradients."""
    from sftchat.config import TrainingSettings
    from sftchat.models.loader import load_model
    from sftchat.training.loss import LossFunction
    from sftchat.training.trainer import _wrap_with_lora

    loaded = load_model("builtin", "cpu", quantize=quantize)
    model = _wrap_with_lora(loaded, TrainingSettings(rank=8, alpha=16, dropout=0.0), None)
    # Non-zero LoRA B so the adapter takes part in the check.
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.02)
    function = LossFunction(model, loaded.tokenizer.pad_token_id, "cpu")
    assert function.packed
    examples = _examples(loaded.tokenizer)

    def loss_and_grads(packed: bool):
        function.packed = packed
        model.zero_grad()
        loss, tokens = function.loss_sum(examples)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.item(), tokens, grads

    packed_loss, packed_tokens, packed_grads = loss_and_grads(True)
    padded_loss, padded_tokens, padded_grads = loss_and_grads(False)
    assert packed_tokens == padded_tokens
    assert packed_loss == pytest.approx(padded_loss, rel=tolerance)
    assert packed_grads.keys() == padded_grads.keys() and packed_grads
    for name in packed_grads:
        difference = (packed_grads[name] - padded_grads[name]).norm()
        assert difference <= tolerance * 10 * max(padded_grads[name].norm(), 1e-3), name
    function.packed = True
    assert function.verify(examples) and function.layout == "packed"


def test_fast_dropout_matches_dropout_statistics():
    torch.manual_seed(0)
    dropout = FastDropout(0.1)
    x = torch.ones(400, 500)
    out = dropout(x)
    zeros = (out == 0).float().mean().item()
    assert zeros == pytest.approx(0.1, abs=0.005)
    assert out[out != 0].unique().tolist() == pytest.approx([1 / 0.9])
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    dropout.eval()
    assert dropout(x) is x


def test_lora_dropouts_are_swapped(builtin_cache):
    from sftchat.config import TrainingSettings
    from sftchat.models.loader import load_model
    from sftchat.training.trainer import _wrap_with_lora

    loaded = load_model("builtin", "cpu", quantize=True)
    model = _wrap_with_lora(loaded, TrainingSettings(rank=4, alpha=8, dropout=0.1), None)
    kinds = {type(m).__name__ for m in model.modules() if "Dropout" in type(m).__name__}
    assert kinds == {"FastDropout"}
    assert use_fast_dropout(model) == 0  # nothing left to swap
