from __future__ import annotations

import pytest
import torch

from refine_lm.models.registry import build_model

ARCHS = ["delta_net", "gated_deltanet"]


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
