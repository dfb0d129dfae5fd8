"""``refine-lm eval``: NIAH, RULER QA, LongBench and perplexity for a checkpoint (see refine_lm.eval)."""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import load_config
from ..data.tokenizer import check_vocabulary, load_tokenizer
from ..eval.suite import EvalConfig, run_suite
from .generate import resolve_model

CONFIGS = {"": EvalConfig}


def run(args) -> None:
    cfg = load_config(EvalConfig, args.config, args.overrides)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
    model = resolve_model(cfg.model, cfg.seed).to(cfg.device).eval()
    model.set_backend(cfg.backend)
    check_vocabulary(tokenizer, model.config.vocab_size, cfg.model)
    report = run_suite(cfg, model, tokenizer)
    print((Path(cfg.output_dir) / "results.md").read_text())
    print(f"wrote {cfg.output_dir}/results.json, results.md" + "".join(f", {Path(f).name}" for f in report["figures"]))
