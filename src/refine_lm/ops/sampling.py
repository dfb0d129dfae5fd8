"""Choosing the next token from logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import torch
from torch import Tensor

from .dtypes import upcast


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest nucleus of mass top_p."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = (probs.cumsum(-1) - probs) >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def inverse_cdf(probs: Tensor, uniforms: Tensor) -> Tensor:
    """One draw per row of ``probs [N, K]`` (non-negative, not necessarily normalised) from ``uniforms [N]`` in
    [0, 1): the first index whose cumulative mass exceeds ``u * total``. A row's draw depends on that row
    only, so it is the same in any batch."""
    cdf = probs.cumsum(-1)
    threshold = uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:]
    index = torch.searchsorted(cdf, threshold, right=True)[:, 0].clamp(max=probs.shape[-1] - 1)
    # rounding can put u * total on the last boundary: then take the last index with mass, never one without
    last_with_mass = (probs > 0).cumsum(-1).argmax(-1)
    return torch.where(probs.gather(-1, index[:, None])[:, 0] > 0, index, last_with_mass)


def sample_tokens(
    logits: Tensor,
    *,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    uniforms: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """``logits [B, V]`` -> ``(tokens [B], logprobs [B])``.

    Sampling draws one uniform number per row (``uniforms [B]``, or from ``generator``) and inverts the
    row's distribution. The log-probability is the model's, at ``temperature``, *before* top-k / top-p
    filtering: with temperature 1 it is exactly the policy log-probability an RL trainer needs.
    """
    logits = upcast(logits)
    if not do_sample:
        tokens = logits.argmax(-1)
        return tokens, logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    scaled = logits / temperature
    probs = filter_logits(scaled, top_k, top_p).softmax(-1)
    if uniforms is None:
        uniforms = torch.rand(probs.shape[0], generator=generator, device=probs.device, dtype=torch.float64)
    tokens = inverse_cdf(probs, uniforms.to(probs.device))
    return tokens, scaled.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
