"""L2 normalisation, in both conventions the supported checkpoints were trained with."""

from __future__ import annotations

import torch
from torch import Tensor


def l2_normalize(x: Tensor, eps: float, *, squared: bool) -> Tensor:
    """``x`` scaled to unit L2 norm over the last dim.

    ``squared``: eps is added to the squared norm, ``x / sqrt(|x|^2 + eps)`` (flash-linear-attention's delta
    rule, eps 1e-6); else to the norm, ``x / (|x| + eps)`` (lact_llm, eps 1e-5). The two differ near zero, and a
    checkpoint reproduces its reference outputs only with its own.
    """
    if squared:
        return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)
    return x / (x.norm(dim=-1, keepdim=True) + eps)
