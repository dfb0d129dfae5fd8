"""``refine-lm train``: continue training a checkpoint — ``--phase mid --method refine|sft`` on long raw
documents (here), ``--phase post --method refine|nested-sft|answer-sft`` on long-context QA (``posttrain.py``).

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

from ..config import ConfigError, to_dict
from ..data.tokenizer import check_vocabulary, load_tokenizer
from ..models.registry import load_model
from ..optim import OptimConfig
from ..ranks import is_main
from ..refine.ntp import NextTokenObjective
from ..refine.objective import RefineConfig, RefineObjective
from .data import DataConfig, TrainingData
from .loop import LoopConfig, train
from .metrics import read_metrics
from .posttrain import QADataConfig, posttrain


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
    """Settings of ``refine-lm train``. Defaults are the paper's recipes (ALGORITHM.md §2.8) except the sequence
    length and the learning rate, which small CPU models need smaller / larger.

    phase: ``mid`` (raw long documents) or ``post`` (long-context QA examples, nested updates).
    method: mid-training: ``refine`` or ``sft`` (NTP only); post-training: ``refine`` (inner REFINE
        step on the prompt, then answer-SFT), ``nested-sft`` (inner NTP step, then answer-SFT) or
        ``answer-sft`` (answer-SFT only).
    model: the checkpoint directory to start from (with its tokenizer).
    data: the corpus and, for mid-training, its sequences (post-training generates QA from its documents).
    qa: post-training examples (files or generated) and their validation.
    optim / loop / refine / sft: see their classes (``refine.reward`` and ``refine.lambda_rl`` left unset
        take the phase's defaults, ALGORITHM.md §2.8).
    output_dir: checkpoints and metrics.jsonl.
    """

    phase: Literal["mid", "post"] = "mid"
    method: Literal["refine", "sft", "nested-sft", "answer-sft"] = "refine"
    model: str = "bases/delta_net"
    data: DataConfig = field(default_factory=DataConfig)
    qa: QADataConfig = field(default_factory=QADataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    output_dir: str = "runs/train"

    def __post_init__(self) -> None:
        methods = PHASE_METHODS[self.phase]
        if self.method not in methods:
            raise ValueError(f"method {self.method!r} is not a {self.phase}-training method (use one of: {', '.join(methods)})")
        if self.method == "refine" and self.phase == "mid":
            self.refine.check_fits(self.data.seq_len)
        if self.method == "refine" and self.loop.batch_size % self.refine.mini_batches:
            raise ValueError(
                f"refine.mini_batches {self.refine.mini_batches} does not divide loop.batch_size {self.loop.batch_size}"
            )


PHASE_METHODS = {"mid": ("refine", "sft"), "post": ("refine", "nested-sft", "answer-sft")}


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
    objective = RefineObjective(cfg.refine, cfg.loop.micro, phase="mid")
    objective.attach_reference(model)
    return objective


def run_training(cfg: TrainConfig) -> dict[str, float]:
    """``refine-lm train``: mid- or post-training, by ``cfg.phase``."""
    return posttrain(cfg) if cfg.phase == "post" else midtrain(cfg)


def midtrain(cfg: TrainConfig) -> dict[str, float]:
    if cfg.phase != "mid":
        raise ConfigError(f"midtrain() needs phase: mid, got {cfg.phase!r}")
    cfg.refine = cfg.refine.for_phase("mid")
    if cfg.method == "sft" and cfg.sft.match_compute_of:
        cfg.loop.steps = compute_matched_steps(cfg.sft.match_compute_of, cfg.loop.batch_size, cfg.data.seq_len)
        if is_main():
            print(f"sft: {cfg.loop.steps} steps, compute-matched to {cfg.sft.match_compute_of}")
    torch.manual_seed(cfg.loop.seed)
    model = load_model(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    check_vocabulary(tokenizer, model.config.vocab_size, cfg.model)
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
