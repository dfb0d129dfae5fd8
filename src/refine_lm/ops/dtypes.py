"""Precision policy: statistics and recurrences run in fp32 — or fp64 when the inputs are fp64 (tests)."""

from __future__ import annotations

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least fp32 (bf16 / fp16 -> fp32; fp32 and fp64 unchanged)."""
    return x.to(compute_dtype(x))
