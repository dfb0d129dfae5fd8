"""``refine-lm train --phase mid --method refine|sft``: continue training a checkpoint."""

from __future__ import annotations

from ..config import load_config
from ..train.midtrain import TrainConfig, midtrain


def run(args) -> None:
    midtrain(load_config(TrainConfig, args.config, args.overrides))
