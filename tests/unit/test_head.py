"""The chunked output head (`training.head`) gives what full logits give: the same
log-probabilities, arg-max and margins, the same gradient reaching the hidden states, chunk
by chunk (a chunk of two positions here) and whatever the chunk size."""

from __future__ import annotations

import pytest
import torch

from sftchat.training import head
from sftchat.training.head import LearnedLogits


def _case(bias: bool, dtype=torch.float32):
    torch.manual_seed(0)
    positions, width, vocabulary = 7, 16, 50
    layer = torch.nn.Linear(width, vocabulary, bias=bias).to(dtype)
    layer.requires_grad_(False)
    hidden = torch.randn(positions, width, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, vocabulary, (positions,))
    targets[3] = layer(hidden[3]).argmax()          # one position reproduced exactly
    return layer, hidden, targets


@pytest.mark.parametrize("bias", [False, True])
def test_fused_scores_and_their_gradient_equal_full_logits(bias, monkeypatch):
    monkeypatch.setattr(head, "CHUNK_ELEMENTS", 100)   # 2 positions of 50 per chunk
    layer, hidden, targets = _case(bias)
    weights = torch.linspace(-1.0, 2.0, len(targets))  # any downstream use of log p
    out = LearnedLogits(targets, torch.zeros_like(targets), tokens=7, hidden=hidden,
                        head=layer)
    scores = out.token_scores()
    (scores.logp * weights).sum().backward()
    fused_grad, hidden.grad = hidden.grad.clone(), None

    logits = layer(hidden).float()
    logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    (logp * weights).sum().backward()
    assert torch.allclose(scores.logp, logp, atol=1e-5)
    assert torch.allclose(fused_grad, hidden.grad, atol=1e-5)
    assert scores.best.tolist() == logits.argmax(-1).tolist()
    others = logits.detach().scatter(1, targets[:, None], float("-inf")).amax(-1)
    target_logit = logits.detach().gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(scores.margin, target_logit - others, atol=1e-5)
    assert scores.wrong.tolist() == [i != 3 for i in range(len(targets))]
    assert out.token_scores() is scores      # computed once per forward, shared


def test_gather_top_k_and_chunks_read_the_same_logits(monkeypatch):
    monkeypatch.setattr(head, "CHUNK_ELEMENTS", 100)
    layer, hidden, targets = _case(bias=True)
    out = LearnedLogits(targets, torch.zeros_like(targets), tokens=7, hidden=hidden,
                        head=layer)
    full = layer(hidden).float().detach()
    assert torch.allclose(out.logits, full, atol=1e-6)
    values, ids = out.top_k(5)
    top = full.topk(5, dim=-1)
    assert torch.equal(ids, top.indices) and torch.allclose(values, top.values, atol=1e-6)
    assert torch.allclose(out.gather(ids).detach(), top.values, atol=1e-5)
    # A gradient through `gather` reaches the hidden states as through full logits.
    out.gather(ids).sum().backward()
    gathered_grad, hidden.grad = hidden.grad.clone(), None
    layer(hidden).gather(1, ids).sum().backward()
    assert torch.allclose(gathered_grad, hidden.grad, atol=1e-5)


def test_no_gradient_is_formed_without_one_asked():
    layer, hidden, targets = _case(bias=False)
    with torch.no_grad():
        scores = LearnedLogits(targets, torch.zeros_like(targets), tokens=7,
                               hidden=hidden, head=layer).token_scores()
    assert not scores.logp.requires_grad
