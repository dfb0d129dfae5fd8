"""``refine-lm train --phase mid --method refine|sft``: continue training a checkpoint on long raw documents.

``refine`` optimises REFINE's objective (NTP + clipped policy gradient on rollouts); ``sft`` is the
NTP-only baseline in the same loop. Budgets are explicit: the same ``loop.steps`` gives a
step-matched comparison; ``sft.mini_batches`` matches the number of optimiser updates per batch;
``sft.match_compute_of`` gives the baseline as many steps as a finished REFINE run's logged compute
(forward-equivalent tokens: a no-grad forward counts 1 per token, a forward + backward 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoTokenizer

from ..config import ConfigError, to_dict
from ..models.registry import load_model
from ..refine.objective import RefineConfig, RefineObjective
from .data import DataConfig, TrainingData
from .distributed import is_main
from .loop import LoopConfig, train
from .metrics import read_metrics
from .ntp import NextTokenObjective
from .optim import OptimConfig


@dataclass
class SFTConfig:
    """The next-token-prediction baseline (``--method sft``).

    mini_batches: optimiser updates per batch (set it to REFINE's ppo_epochs * mini_batches to match
        the number of optimiser steps per batch).
    match_compute_of: a finished REFINE run directory; the baseline then runs as many steps as that
        run's total logged compute allows (overrides loop.steps).
    """

    mini_batches: int = 1
    match_compute_of: str | None = None


@dataclass
class TrainConfig:
    """Settings of ``refine-lm train``. Defaults are the paper's mid-training recipe (SPEC 2.8) except
    the sequence length and the learning rate, which small CPU models need smaller / larger.

    phase: ``mid`` (raw long documents).
    method: ``refine`` or ``sft``.
    model: the checkpoint directory to start from (with its tokenizer).
    data / optim / loop / refine / sft: see their classes.
    output_dir: checkpoints and metrics.jsonl.
    """

    phase: Literal["mid"] = "mid"
    method: Literal["refine", "sft"] = "refine"
    model: str = "bases/delta_net"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    output_dir: str = "runs/train"


def compute_matched_steps(refine_run: str | Path, batch_size: int, seq_len: int) -> int:
    """Steps of an NTP baseline that cost what a REFINE run's logged ``compute_tokens`` cost."""
    path = Path(refine_run) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"sft.match_compute_of: {path} not found (run the REFINE job first)")
    total = sum(r.get("compute_tokens", 0.0) for r in read_metrics(path) if r.get("split") == "train")
    if not total:
        raise ConfigError(f"sft.match_compute_of: {path} logs no compute_tokens")
    return max(1, round(total / (3 * batch_size * seq_len)))


def build_objective(cfg: TrainConfig, model) -> RefineObjective | NextTokenObjective:
    if cfg.method == "sft":
        return NextTokenObjective(cfg.loop.micro, mini_batches=cfg.sft.mini_batches)
    objective = RefineObjective(cfg.refine, cfg.loop.micro)
    objective.attach_reference(model)
    return objective


def midtrain(cfg: TrainConfig) -> dict[str, float]:
    if cfg.method == "sft" and cfg.sft.match_compute_of:
        cfg.loop.steps = compute_matched_steps(cfg.sft.match_compute_of, cfg.loop.batch_size, cfg.data.seq_len)
        if is_main():
            print(f"sft: {cfg.loop.steps} steps, compute-matched to {cfg.sft.match_compute_of}")
    torch.manual_seed(cfg.loop.seed)
    model = load_model(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    data = TrainingData(cfg.data, cfg.loop.batch_size, cfg.loop.seed)
    if tokenizer.get_vocab() != data.tokenizer().get_vocab():
        raise ConfigError(
            f"model {cfg.model} and corpus {cfg.data.corpus} use different tokenizers: prepare the corpus with "
            f"the model's (refine-lm data prepare tokenizer.path={cfg.model})"
        )
    return train(
        cfg.loop,
        cfg.optim,
        model,
        build_objective(cfg, model),
        data.batch_at,
        cfg.output_dir,
        validate=data.validator(),
        tokenizer=tokenizer,
        run_config=to_dict(cfg),
    )
