from __future__ import annotations

import dataclasses
import os

import pytest
import torch

# flash-linear-attention's Triton kernels run on CPU under Triton's interpreter (tests/test_fla_kernels.py);
# it is chosen when a kernel is defined, so before anything imports them
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from refine_lm.models.registry import build_model
from refine_lm.state import TensorState

# The test models are tiny: one thread is faster than two (no fork/join per op) and does not slow
# down badly when other work shares the cores.
torch.set_num_threads(1)

ARCHS = ["delta_net", "gated_deltanet", "lact"]


@pytest.fixture(autouse=True)
def cpu_without_native_bf16(monkeypatch):
    """``precision: auto`` resolves to fp32 in every test, whatever CPU runs them: results must not depend on
    whether the machine has AMX / AVX512-BF16 (tests of the choice itself set the flags they need)."""
    from refine_lm.ops import dtypes

    monkeypatch.setattr(dtypes, "_cpu_flags", lambda: frozenset())


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


@pytest.fixture(scope="session")
def eval_tokenizer():
    """A byte-level BPE tokenizer (vocab 512, fits the tiny preset) trained on made-up text, nothing downloaded."""
    from refine_lm.data.tokenizer import train_tokenizer
    from refine_lm.eval.synthetic import tokenizer_training_text

    return train_tokenizer(tokenizer_training_text(), vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, eval_tokenizer):
    """A saved tiny DeltaNet with the tokenizer next to it, as ``refine-lm eval --model DIR`` expects."""
    path = tmp_path_factory.mktemp("tiny-eval-model")
    build_model("delta_net", "tiny", seed=0).save_pretrained(path)
    eval_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A prepared corpus of generated text (BPE vocab 512, synthetic recall episodes of 512 tokens)."""
    from refine_lm.data import prepare_corpus

    from .data_helpers import small_config, write_text_corpus

    root = tmp_path_factory.mktemp("tiny-corpus")
    write_text_corpus(root / "text", n_docs=30)
    return prepare_corpus(small_config(root / "text", root / "prepared"))


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
