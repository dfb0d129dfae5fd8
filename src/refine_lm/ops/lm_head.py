"""Language-model head statistics computed in slices of tokens.

The logits of a long sequence (``L x V`` floats: 2 GB for L = 16K, V = 32K) are never built
at once: tokens are processed ``slice_len`` at a time. With gradients, each slice is
checkpointed, so the backward pass recomputes its logits instead of keeping them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .dtypes import upcast

IGNORE_INDEX = -100


def _logprobs_of(hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float) -> Tensor:
    logits = upcast(hidden @ weight.T) / temperature
    safe = targets.clamp(min=0)
    logp = logits.log_softmax(-1).gather(-1, safe[:, None])[:, 0]
    return logp.masked_fill(targets == IGNORE_INDEX, 0.0)


def token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, *, slice_len: int = 2048, temperature: float = 1.0) -> Tensor:
    """``log p(targets | hidden)`` for ``hidden [..., D]``, ``targets [...]`` -> ``[...]`` (0 where ignored).

    Differentiable with respect to ``hidden`` and ``weight``.
    """
    shape = targets.shape
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    pieces = []
    for start in range(0, flat_t.numel(), slice_len):
        h, t = flat_h[start : start + slice_len], flat_t[start : start + slice_len]
        if needs_grad:
            pieces.append(checkpoint(_logprobs_of, h, weight, t, temperature, use_reentrant=False))
        else:
            pieces.append(_logprobs_of(h, weight, t, temperature))
    if not pieces:
        return flat_h.new_zeros(shape, dtype=torch.float32)
    return torch.cat(pieces).reshape(shape)


@dataclass
class TokenStats:
    """Per-position statistics of the next-token distribution (no gradients)."""

    entropy: Tensor  # [...] nats
    argmax: Tensor  # [...] most likely next token
    logprobs: Tensor | None = None  # [...] log p(target), 0 where the target is ignored
    sampled: Tensor | None = None  # [...] a token drawn from the distribution (temperature 1)


@torch.no_grad()
def token_stats(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor | None = None,
    *,
    slice_len: int = 2048,
    generator: torch.Generator | None = None,
) -> TokenStats:
    """Entropy, argmax, (with targets) target log-probs and (with a generator) samples of
    ``softmax(hidden @ weight.T)``."""
    shape = hidden.shape[:-1]
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = None if targets is None else targets.reshape(-1)
    entropy, argmax, logprobs, sampled = [], [], [], []
    for start in range(0, flat_h.shape[0], slice_len):
        logits = upcast(flat_h[start : start + slice_len] @ weight.T)
        logp = logits.log_softmax(-1)
        entropy.append(-(logp.exp() * logp).sum(-1))
        argmax.append(logits.argmax(-1))
        if generator is not None:
            sampled.append(torch.multinomial(logp.exp(), 1, generator=generator)[:, 0])
        if flat_t is not None:
            t = flat_t[start : start + slice_len]
            picked = logp.gather(-1, t.clamp(min=0)[:, None])[:, 0]
            logprobs.append(picked.masked_fill(t == IGNORE_INDEX, 0.0))
    empty = flat_h.new_zeros(0, dtype=torch.float32)
    return TokenStats(
        entropy=(torch.cat(entropy) if entropy else empty).reshape(shape),
        argmax=(torch.cat(argmax) if argmax else empty.long()).reshape(shape),
        logprobs=None if flat_t is None else (torch.cat(logprobs) if logprobs else empty).reshape(shape),
        sampled=None if generator is None else (torch.cat(sampled) if sampled else empty.long()).reshape(shape),
    )
