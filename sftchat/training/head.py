"""The output head at learned positions, without full-vocabulary float32 logits.

A real vocabulary makes the head the largest tensor of a step: 4 × 1,024 positions × 151,936
tokens is 2.5 GB in float32, and a per-position copy for an arg-max or a scatter doubles it.
Every loss term reads the head through `LearnedLogits`, which keeps the *hidden states* at
the learned positions and applies the head in chunks of positions (`CHUNK_ELEMENTS` logits at
a time):

- `token_scores()`: each position's log-probability of its target (differentiable), and, from
  the same chunk, whether the target is the arg-max and by what margin it beats the best other
  token (what "reproduced exactly" and "avoided" read). One fused pass: the gradient of the
  log-probability with respect to the hidden state, `(onehot - softmax) · W`, is formed chunk by
  chunk in the forward and only `[positions, hidden]` is kept for the backward (the
  chunked-linear-cross-entropy idea of Liger/Apple's CCE, written for any device: neither ships
  a CPU kernel). It is computed once per forward and shared by every term that reads it.
- `gather(ids)`: the logits of a few tokens per position (distillation's top-k), from the
  head's rows for those tokens only.
- `top_k(k)` and `logit_chunks()`: no-gradient reads for references and drift.

The head is frozen (LoRA does not target it: `all-linear` leaves the output layer out), so no
gradient for its weight is needed; a trainable head falls back to plain autograd per chunk.
The padded layout (`LossFunction`'s fallback for architectures that scale their logits) comes
with the model's own logits already made: the same reads work on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Logits formed at once, in float32 elements (64 MiB): a chunk of positions × the vocabulary.
CHUNK_ELEMENTS = 1 << 24


@dataclass
class TokenScores:
    logp: object     # [N] float32: log-probability of each position's target (differentiable)
    best: object     # [N] the arg-max token (no gradient)
    margin: object   # [N] float32: target logit minus the best other token's (no gradient)
    targets: object  # [N] the targets scored

    @property
    def wrong(self):
        """[N] bool: the target is not the model's first choice."""
        return self.best != self.targets


def _rows_per_chunk(vocabulary: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(1, vocabulary))


def _scores_of_chunk(logits, targets):
    """(log-probabilities of `targets`, arg-max, margin, log-sum-exp) of float32 `logits`."""
    import torch

    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    top = logits.topk(2, dim=-1) if logits.shape[1] > 1 else None
    if top is None:
        best, other = torch.zeros_like(targets), torch.full_like(target_logit, -float("inf"))
    else:
        best = top.indices[:, 0]
        other = torch.where(best == targets, top.values[:, 1], top.values[:, 0])
    return target_logit - lse, best, target_logit - other, lse


def _fused_scores():
    import torch
    import torch.nn.functional as F

    class FusedTokenScores(torch.autograd.Function):
        """log p(target) per position from hidden states and a frozen head, chunked; the
        backward scales the per-position gradient formed in the forward."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets):
            count = hidden.shape[0]
            rows = _rows_per_chunk(weight.shape[0])
            want_grad = ctx.needs_input_grad[0]
            logp = torch.empty(count, dtype=torch.float32, device=hidden.device)
            best = torch.empty(count, dtype=torch.long, device=hidden.device)
            margin = torch.empty(count, dtype=torch.float32, device=hidden.device)
            grad = torch.empty_like(hidden) if want_grad else None
            for start in range(0, count, rows):
                end = min(count, start + rows)
                logits = F.linear(hidden[start:end], weight, bias).float()
                chunk_targets = targets[start:end]
                logp[start:end], best[start:end], margin[start:end], lse = \
                    _scores_of_chunk(logits, chunk_targets)
                if want_grad:  # d log p / d logits = onehot - softmax, in place of the logits
                    softmax = logits.sub_(lse[:, None]).exp_().neg_()
                    softmax.scatter_add_(1, chunk_targets[:, None],
                                         torch.ones_like(softmax[:, :1]))
                    grad[start:end] = (softmax.to(weight.dtype) @ weight).to(hidden.dtype)
            ctx.save_for_backward(grad)
            ctx.mark_non_differentiable(best, margin)
            return logp, best, margin

        @staticmethod
        def backward(ctx, grad_logp, _grad_best, _grad_margin):
            (grad,) = ctx.saved_tensors
            return grad * grad_logp[:, None].to(grad.dtype), None, None, None

    return FusedTokenScores


_FUSED = None


def _fused():
    global _FUSED
    if _FUSED is None:
        _FUSED = _fused_scores()
    return _FUSED


@dataclass
class LearnedLogits:
    """The learned positions of one forward, in example order (an example's positions are
    contiguous and in order; examples in the order they were given).

    Either `hidden` (the last hidden states there) with `head` (the output layer), or `logits`
    already made (the padded layout)."""

    targets: object   # [N] the next token at each learned position
    owners: object    # [N] index (in the forward's sequences) of the example it is in
    tokens: int       # real (non-padding) tokens processed
    real: object = None  # [rows, width] bool: which positions of the forward are real tokens
    hidden: object = None
    head: object = None
    logits_made: object = None
    _scores: TokenScores | None = field(default=None, repr=False)

    @property
    def vocabulary(self) -> int:
        if self.logits_made is not None:
            return self.logits_made.shape[-1]
        return self.head.weight.shape[0]

    def _plain_logits(self, start: int, end: int):
        import torch.nn.functional as F

        if self.logits_made is not None:
            return self.logits_made[start:end].float()
        hidden = self.hidden[start:end].to(self.head.weight.dtype)
        return F.linear(hidden, self.head.weight, getattr(self.head, "bias", None)).float()

    def token_scores(self) -> TokenScores:
        """`TokenScores` of every position; computed once per forward and shared."""
        if self._scores is None:
            self._scores = self._compute_scores()
        return self._scores

    def _compute_scores(self) -> TokenScores:
        import torch

        bias = None if self.head is None else getattr(self.head, "bias", None)
        frozen_head = self.logits_made is None and not self.head.weight.requires_grad and (
            bias is None or not bias.requires_grad)
        if frozen_head:
            hidden = self.hidden.to(self.head.weight.dtype)
            logp, best, margin = _fused().apply(hidden, self.head.weight, bias, self.targets)
            return TokenScores(logp, best, margin, self.targets)
        parts = []   # plain autograd, chunk by chunk (a trainable head, the padded layout)
        rows = _rows_per_chunk(self.vocabulary)
        for start in range(0, len(self.targets), rows):
            end = min(len(self.targets), start + rows)
            logp, best, margin, _ = _scores_of_chunk(self._plain_logits(start, end),
                                                     self.targets[start:end])
            parts.append((logp, best.detach(), margin.detach()))
        if not parts:
            empty = torch.zeros(0, device=self.targets.device)
            return TokenScores(empty, self.targets.clone(), empty, self.targets)
        return TokenScores(*(torch.cat(column) for column in zip(*parts)), self.targets)

    def gather(self, ids):
        """[N, k] float32 logits of the tokens `ids` [N, k] at each position (differentiable):
        from the head's rows for those tokens, never the whole vocabulary."""
        import torch

        if self.logits_made is not None:
            return self.logits_made.float().gather(1, ids)
        rows = self.head.weight[ids]                              # [N, k, hidden]
        hidden = self.hidden.to(rows.dtype)
        logits = torch.bmm(rows, hidden[:, :, None]).squeeze(-1)
        bias = getattr(self.head, "bias", None)
        if bias is not None:
            logits = logits + bias[ids]
        return logits.float()

    def logit_chunks(self):
        """(start, float32 logits [rows, vocab]) over every position, chunk by chunk (no
        gradient is meant to flow: for references and measures)."""
        rows = _rows_per_chunk(self.vocabulary)
        for start in range(0, len(self.targets), rows):
            yield start, self._plain_logits(start, min(len(self.targets), start + rows))

    def top_k(self, k: int):
        """(values, ids), each [N, k]: the `k` largest logits at each position, chunked."""
        import torch

        values, ids = [], []
        for _start, logits in self.logit_chunks():
            top = logits.topk(min(k, logits.shape[-1]), dim=-1)
            values.append(top.values)
            ids.append(top.indices)
        if not values:
            empty = torch.zeros((0, k), device=self.targets.device)
            return empty, empty.long()
        return torch.cat(values), torch.cat(ids)

    @property
    def logits(self):
        """Every learned position's full logits (float32) — for small models and tests; the
        training terms use the chunked reads above."""
        import torch

        chunks = [logits for _start, logits in self.logit_chunks()]
        if not chunks:
            return torch.zeros((0, self.vocabulary), device=self.targets.device)
        return torch.cat(chunks)
