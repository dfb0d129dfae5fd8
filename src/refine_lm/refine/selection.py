"""Where to roll out: entropy smoothing and one position per chunk of each sequence (ALGORITHM.md §2.1-2.3)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.sampling import inverse_cdf

SelectionMode = Literal["entropy", "uniform", "argmax", "argmin"]


def smoothing_window(rollout_len: int) -> int:
    """The odd window of the moving average: k, or k + 1 when k is even."""
    return rollout_len if rollout_len % 2 else rollout_len + 1


def smooth_entropy(entropy: Tensor, rollout_len: int) -> Tensor:
    """Centred moving average over positions, zero padding counted in the average. ``[B, L] -> [B, L]``.

    A rollout of k tokens is judged on k tokens, so a position is ranked by the uncertainty of its
    neighbourhood rather than of one token.
    """
    window = smoothing_window(rollout_len)
    if window == 1:
        return entropy
    padded = entropy[:, None].float()
    return F.avg_pool1d(padded, window, stride=1, padding=window // 2, count_include_pad=True)[:, 0].to(entropy.dtype)


def select_positions(
    entropy: Tensor,
    *,
    num_chunks: int,
    rollout_len: int,
    mode: SelectionMode = "entropy",
    tau: float = 1.0,
    margin: int = 20,
    generator: torch.Generator | None = None,
    uniforms: Tensor | None = None,
) -> Tensor:
    """Rollout start positions ``s [B, num_chunks]``, one per chunk of each sequence.

    ``entropy[b, t]`` is the uncertainty about token t + 1. The L real tokens are cut into
    ``num_chunks`` chunks of ``L // num_chunks`` (a remainder at the end is never sampled); in each
    chunk an index t is drawn from ``softmax(smoothed entropy / tau)`` (``entropy`` mode; or
    uniformly, or the arg-max / arg-min), and the rollout starts at ``s = t + 1``: its prefix
    ``x[:s]`` ends with the token whose successor was uncertain. ``s`` is clamped to
    ``[margin, L - margin]`` and so that the k ground-truth tokens ``x[s:s+k]`` exist.
    Random draws: ``uniforms [B, num_chunks]`` in [0, 1), or drawn from ``generator``.
    """
    B, L = entropy.shape
    chunk = L // num_chunks
    if chunk < 1:
        raise ValueError(f"cannot cut {L} tokens into {num_chunks} chunks")
    low, high = max(margin, 1), min(L - margin, L - rollout_len)
    if low > high:
        raise ValueError(f"sequences of {L} tokens are too short for margin {margin} and rollouts of {rollout_len} tokens")
    scores = smooth_entropy(entropy, rollout_len)[:, : num_chunks * chunk].reshape(B, num_chunks, chunk).float()
    if mode in ("entropy", "uniform") and uniforms is None:
        uniforms = torch.rand(B, num_chunks, generator=generator, device=entropy.device, dtype=torch.float64)
    if mode == "entropy":
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        probs = torch.softmax(scores / tau, dim=-1).reshape(B * num_chunks, chunk)
        index = inverse_cdf(probs, uniforms.to(entropy.device).reshape(-1)).reshape(B, num_chunks)
    elif mode == "uniform":
        index = (uniforms.to(entropy.device) * chunk).long().clamp(max=chunk - 1)
    elif mode == "argmax":
        index = scores.argmax(-1)
    elif mode == "argmin":
        index = scores.argmin(-1)
    else:
        raise ValueError(f"unknown selection mode {mode!r} (entropy, uniform, argmax, argmin)")
    t = index + torch.arange(num_chunks, device=entropy.device) * chunk
    return (t + 1).clamp(low, high)
