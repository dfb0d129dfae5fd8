"""GRPO advantages and the clipped policy-gradient loss (ALGORITHM.md §2.7-2.8)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

GroupBy = Literal["auto", "sequence", "position"]


def grpo_advantages(rewards: Tensor, group_by: GroupBy = "auto", scale_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-standardised rewards. ``rewards [B, c, n]`` (sequence, position, rollout) -> same shape.

    ``sequence`` groups all c*n rollouts of a sequence (the paper's choice, the default when n = 1);
    ``position`` groups the n rollouts of one position (the default when n > 1).
    ``A = (r - mean) / (std + eps)`` with the unbiased std; ``scale_std=False`` keeps ``r - mean``
    (Dr. GRPO). A group of one rollout gets advantage 0.
    """
    if rewards.dim() != 3:
        raise ValueError(f"rewards must be [sequences, positions, rollouts], got shape {tuple(rewards.shape)}")
    if group_by == "auto":
        group_by = "sequence" if rewards.shape[2] == 1 else "position"
    if group_by == "sequence":
        dims: tuple[int, ...] = (1, 2)
    elif group_by == "position":
        dims = (2,)
    else:
        raise ValueError(f"group_by must be auto, sequence or position, got {group_by!r}")
    centred = rewards - rewards.mean(dim=dims, keepdim=True)
    if not scale_std:
        return centred
    size = 1
    for d in dims:
        size *= rewards.shape[d]
    if size < 2:
        return torch.zeros_like(rewards)
    return centred / (rewards.std(dim=dims, keepdim=True, unbiased=True) + eps)


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    *,
    clip_eps: float = 0.2,
    dual_clip: float | None = 3.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO clipped surrogate with dual clip. ``[R, k]`` log-probs, ``[R]`` advantages.

    ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)``, and for A < 0 at most ``-c * A``
    (dual clip: a very unlikely-now token with negative advantage cannot dominate). Returns the
    per-token losses ``[R, k]`` (average them over tokens: "token-mean") and per-token indicators.
    """
    A = advantages[:, None].expand_as(logprobs)
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -A * ratio
    clipped = -A * ratio.clamp(1 - clip_eps, 1 + clip_eps)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = (clipped > unclipped).float()
    dual_clipped = torch.zeros_like(was_clipped)
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound = -A * dual_clip
        dual_clipped = ((A < 0) & (loss > bound)).float()
        loss = torch.where(A < 0, torch.minimum(loss, bound), loss)
    log_ratio = (logprobs - old_logprobs).detach()
    approx_kl = torch.expm1(log_ratio) - log_ratio  # k3 estimator of KL(old || new), >= 0
    return loss, {"clip": was_clipped, "dual_clip": dual_clipped, "approx_kl": approx_kl}


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(policy || reference): ``exp(ref - logp) - (ref - logp) - 1`` (>= 0)."""
    delta = ref_logprobs - logprobs
    return torch.expm1(delta) - delta
