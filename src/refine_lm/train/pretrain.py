"""Pretraining from scratch with next-token prediction: ``refine-lm pretrain``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import to_dict
from ..models.registry import build_config, build_model
from ..optim import OptimConfig
from ..ranks import is_main
from ..refine.ntp import NextTokenObjective
from .checkpoint import list_checkpoints
from .data import DataConfig, TrainingData
from .loop import LoopConfig, train
from .metrics import read_metrics


@dataclass
class ModelSpec:
    """A model to build: an architecture, a preset, and config fields that override the preset's.

    arch: ``delta_net``, ``gated_deltanet`` or ``lact``.
    preset: ``tiny``, ``small`` or null.
    config: Hugging Face config fields (e.g. ``hidden_size``); the vocabulary and special-token ids
        always come from the corpus's tokenizer.
    """

    arch: str = "delta_net"
    preset: str | None = "small"
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        build_config(self.arch, self.preset, **self.config)  # an unknown arch, preset or setting fails at start-up


@dataclass
class PretrainConfig:
    """Settings of ``refine-lm pretrain``.

    model / data / optim / loop: see their classes.
    output_dir: checkpoints (``checkpoint-<step>/``, Hugging Face directories with the tokenizer) and
        ``metrics.jsonl``.
    export_to: if set, the final model is also written there as a clean Hugging Face directory
        (config, weights, tokenizer) with ``training.yaml`` (these settings) and ``results.json``.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=50))
    loop: LoopConfig = field(default_factory=LoopConfig)
    output_dir: str = "runs/pretrain"
    export_to: str | None = None


def pretrain(cfg: PretrainConfig) -> dict[str, float]:
    torch.manual_seed(cfg.loop.seed)
    data = TrainingData(cfg.data, cfg.loop.batch_size, cfg.loop.seed)
    tokenizer = data.tokenizer()
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    model = build_model(
        cfg.model.arch, cfg.model.preset, seed=cfg.loop.seed, **{**cfg.model.config, "vocab_size": len(tokenizer), **special}
    )
    n_params = sum(p.numel() for p in model.parameters())
    tokens = cfg.loop.steps * cfg.loop.batch_size * cfg.data.seq_len
    if is_main():
        described = data.train.describe(brief=True)
        print(f"{cfg.model.arch}: {n_params / 1e6:.2f}M parameters; {tokens:,} training tokens; {described}")
    result = train(
        cfg.loop,
        cfg.optim,
        model,
        NextTokenObjective(cfg.loop.micro),
        data.batch_at,
        cfg.output_dir,
        validate=data.validator(),
        tokenizer=tokenizer,
        run_config=to_dict(cfg),
    )
    if cfg.export_to:
        result = {**result, **data.unigram_baseline()}
        export(cfg, list_checkpoints(cfg.output_dir)[-1], result, n_params, tokens)
    return result


def export(cfg: PretrainConfig, checkpoint: Path, result: dict[str, float], n_params: int, tokens: int) -> Path:
    """Copy the model and tokenizer files of ``checkpoint`` to ``cfg.export_to`` with the run's settings
    (rank 0 does it; the other data-parallel ranks only return the path)."""
    target = Path(cfg.export_to)
    if not is_main():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for path in checkpoint.iterdir():
        if path.is_file() and path.name not in ("trainer_state.pt", "checkpoint.json"):
            shutil.copy2(path, target / path.name)
    (target / "training.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    records = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    seconds = sum(r.get("step_seconds", 0.0) for r in records if r.get("split") == "train")
    summary = {"parameters": n_params, "training_tokens": tokens, "train_seconds": round(seconds, 1), "validation": result}
    (target / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"exported {checkpoint} -> {target}")
    return target
