"""``refine-lm train --phase mid --method refine|sft`` / ``--phase post --method refine|nested-sft|answer-sft``."""

from __future__ import annotations

from ..config import load_config
from ..train.midtrain import TrainConfig, run_training

CONFIGS = {"": TrainConfig}


def run(args) -> None:
    run_training(load_config(TrainConfig, args.config, args.overrides))
