from __future__ import annotations

import dataclasses

import pytest
import torch

from refine_lm.models.registry import build_model
from refine_lm.state import TensorState

ARCHS = ["delta_net", "gated_deltanet", "lact"]


def tiny_model(arch: str, dtype: torch.dtype = torch.float64, seed: int = 0, **overrides):
    """A tiny randomly initialised model; fp64 by default so equalities can be tight."""
    model = build_model(arch, "tiny", seed=seed, **overrides).to(dtype)
    model.set_backend("chunk", chunk_size=8)
    model.eval()
    return model


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture
def model(arch):
    return tiny_model(arch)


def random_ids(batch: int, length: int, vocab: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def state_leaves(state: TensorState, prefix: str = "") -> list[tuple[str, torch.Tensor | None]]:
    """Every field of a (nested) state as (dotted name, tensor or None), in a fixed order."""
    leaves = []
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        name = f"{prefix}{f.name}"
        if isinstance(value, TensorState):
            leaves += state_leaves(value, name + ".")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                leaves += state_leaves(item, f"{name}.{i}.")
        else:
            leaves.append((name, value))
    return leaves


def states_close(a: TensorState, b: TensorState, atol: float = 1e-10, rtol: float = 0.0) -> bool:
    """Same fields, same shapes and dtypes, values within tolerance (integer fields exactly equal)."""
    for (name, x), (other, y) in zip(state_leaves(a), state_leaves(b), strict=True):
        assert name == other, (name, other)
        if (x is None) != (y is None):
            return False
        if x is None:
            continue
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_floating_point() and not torch.allclose(x, y, atol=atol, rtol=rtol):
            return False
        if not x.is_floating_point() and not torch.equal(x, y):
            return False
    return True
