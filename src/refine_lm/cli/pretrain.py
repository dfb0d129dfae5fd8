"""``refine-lm pretrain``: next-token pretraining from scratch on a prepared corpus."""

from __future__ import annotations

from ..config import load_config
from ..train.pretrain import PretrainConfig, pretrain

CONFIGS = {"": PretrainConfig}


def run(args) -> None:
    pretrain(load_config(PretrainConfig, args.config, args.overrides))
