"""Optimiser and learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn


@dataclass
class OptimConfig:
    """AdamW and its schedule (defaults: the paper's, ALGORITHM.md §2.8 — but small models need a larger lr).

    lr: peak learning rate.
    betas: AdamW (beta1, beta2).
    weight_decay: decoupled weight decay for matrices; vectors (norm weights, biases, Gated DeltaNet's
        A_log / dt_bias) get none.
    grad_clip: clip the global gradient norm to this (0 = off).
    schedule: ``constant`` or ``cosine`` (to ``min_lr_ratio * lr`` at the last step).
    warmup_steps: linear warm-up from 0 (both schedules).
    min_lr_ratio: floor of the cosine schedule, relative to lr.
    """

    lr: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {self.betas}")


def build_optimizer(model: nn.Module, cfg: OptimConfig, names: Collection[str] | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (or only those named in ``names``), matrices with weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad or (names is not None and name not in names):
            continue
        if param.dim() < 2 or getattr(param, "_no_weight_decay", False) or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak lr for optimiser step ``step`` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))
