from __future__ import annotations

import pytest
import torch

from refine_lm.models.registry import build_model

# The test models are tiny: one thread is faster than two (no fork/join per op) and does not slow
# down badly when other work shares the cores.
torch.set_num_threads(1)

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


@pytest.fixture(scope="session")
def eval_tokenizer():
    """A byte-level BPE tokenizer (vocab 512, fits the tiny preset) trained on made-up text, nothing downloaded."""
    from refine_lm.eval.synthetic import tokenizer_training_text, train_byte_bpe_tokenizer

    return train_byte_bpe_tokenizer(tokenizer_training_text(), vocab_size=512)


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
