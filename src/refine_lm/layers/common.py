"""Building blocks shared by the fast-weight layers. Parameter names follow flash-linear-attention."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.dtypes import upcast

Backend = Literal["chunk", "naive", "fla", "auto"]


@dataclass(frozen=True)
class Recurrence:
    """How a layer runs its recurrence over a sequence (a run-time choice, not part of the checkpoint).

    backend: ``chunk`` (chunkwise-parallel torch, the default), ``naive`` (token-by-token
        reference, for tests), ``fla`` (flash-linear-attention's Triton kernels: CUDA, or any device
        under Triton's interpreter; an error where they cannot run) or ``auto`` (``fla`` on CUDA where
        installed, else ``chunk``, saying why once).
    chunk_size: tokens per chunk of the chunkwise form.
    """

    backend: Backend = "chunk"
    chunk_size: int = 64


class RMSNorm(nn.Module):
    """``x / rms(x) * weight``, computed in fp32 and returned in the input dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: Tensor) -> Tensor:
        x32 = upcast(x)
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(x32.dtype)
        return y.to(x.dtype)


_GATE_ACTIVATIONS = {"swish": F.silu, "silu": F.silu, "sigmoid": torch.sigmoid}


class GatedRMSNorm(RMSNorm):
    """``RMSNorm(x) * act(gate)``, act SiLU (``swish``) or sigmoid (flash-linear-attention's ``FusedRMSNormGated``)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, activation: str = "swish"):
        super().__init__(hidden_size, eps)
        if activation not in _GATE_ACTIVATIONS:
            raise ValueError(f"output_gate_activation must be one of {sorted(_GATE_ACTIVATIONS)}, got {activation!r}")
        self.activation = _GATE_ACTIVATIONS[activation]

    def forward(self, x: Tensor, gate: Tensor) -> Tensor:  # type: ignore[override]
        y = super().forward(x)
        return (upcast(y) * self.activation(upcast(gate))).to(x.dtype)


class OwnInitialisation(abc.ABC):
    """A module with parameters that are not Linear, Embedding or norm weights, initialised its own way:
    the models' weight initialisation calls ``init_own_parameters`` on every such module."""

    @abc.abstractmethod
    def init_own_parameters(self) -> None:
        """(Re-)initialise those parameters (with ``transformers.initialization``, which leaves loaded ones alone)."""


class ShortConvolution(nn.Conv1d):
    """Holds the ``[D, 1, K]`` depthwise kernel of a causal short convolution (applied by :mod:`refine_lm.ops.conv`)."""

    def __init__(self, hidden_size: int, kernel_size: int, bias: bool = False):
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, bias=bias)


class GatedMLP(nn.Module):
    """SwiGLU MLP: ``down(SiLU(gate(x)) * up(x))``."""

    def __init__(self, hidden_size: int, hidden_ratio: float | None = 4, intermediate_size: int | None = None):
        super().__init__()
        if intermediate_size is None:
            # flash-linear-attention's rule: 2/3 of hidden_ratio * hidden_size, rounded up to a multiple of 256
            intermediate_size = int(hidden_size * (hidden_ratio or 4) * 2 / 3)
            intermediate_size = 256 * ((intermediate_size + 255) // 256)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
