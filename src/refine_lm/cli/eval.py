"""``refine-lm eval``: NIAH, RULER QA, LongBench and perplexity for a checkpoint (see refine_lm.eval)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError, load_config
from ..eval.suite import EvalConfig, run_suite
from .generate import resolve_model

CONFIGS = {"": EvalConfig}


def load_tokenizer(path: str):
    """The tokenizer saved in a directory (a model directory or a tokenizer-only one)."""
    directory = Path(path)
    if not any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise ConfigError(f"{directory}: no tokenizer (tokenizer.json / tokenizer_config.json) in it; pass tokenizer=DIR")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def run(args) -> None:
    cfg = load_config(EvalConfig, args.config, args.overrides)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    model = resolve_model(cfg.model, cfg.seed).to(cfg.device).eval()
    model.set_backend(cfg.backend)
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {model.config.vocab_size}")
    report = run_suite(cfg, model, tokenizer)
    print((Path(cfg.output_dir) / "results.md").read_text())
    print(f"wrote {cfg.output_dir}/results.json, results.md" + "".join(f", {Path(f).name}" for f in report["figures"]))
