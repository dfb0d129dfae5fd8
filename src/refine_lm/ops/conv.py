"""Causal depthwise ("short") convolution over time, with a cache of the last inputs.

The cache of a kernel of width K is the last K - 1 *inputs* (not outputs), ``[B, K - 1, D]``,
so a sequence can be cut anywhere: convolving ``cat(cache, x)`` without padding gives exactly
what one pass over the uncut sequence gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, cache: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``x [B, T, D]``, ``weight [D, K]`` -> ``(y [B, T, D], padded input [B, K - 1 + T, D])``.

    The padded input (cache, or zeros, followed by x) is returned so callers can read the cache at
    any position with :func:`conv_cache_at`.
    """
    B, _, D = x.shape
    K = weight.shape[-1]
    if cache is None:
        cache = x.new_zeros(B, K - 1, D)
    elif tuple(cache.shape) != (B, K - 1, D):
        raise ValueError(f"conv cache has shape {tuple(cache.shape)}, expected {(B, K - 1, D)}")
    padded = torch.cat([cache.to(x.dtype), x], dim=1)
    y = F.conv1d(padded.transpose(1, 2), weight[:, None, :].to(x.dtype), bias, groups=D).transpose(1, 2)
    return y, padded


def conv_cache_at(padded: Tensor, rows: Tensor, lengths: Tensor, kernel_size: int) -> Tensor:
    """The cache after reading ``lengths[i]`` tokens of row ``rows[i]``: ``[M, K - 1, D]``."""
    offsets = lengths[:, None] + torch.arange(kernel_size - 1, device=padded.device)
    return padded[rows[:, None], offsets]


def causal_conv1d_step(x: Tensor, weight: Tensor, bias: Tensor | None, cache: Tensor) -> tuple[Tensor, Tensor]:
    """One token: ``x [B, D]``, ``cache [B, K - 1, D]`` -> ``(y [B, D], new cache)``."""
    window = torch.cat([cache.to(x.dtype), x[:, None]], dim=1)  # [B, K, D]
    y = (window * weight.T.to(x.dtype)).sum(1)
    if bias is not None:
        y = y + bias
    return y, window[:, 1:]
