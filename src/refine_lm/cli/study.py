"""``refine-lm study``: run (or resume) a grid of arms x seeds and write its report."""

from __future__ import annotations

from ..config import load_config
from ..study import StudyConfig, run_study

CONFIGS = {"": StudyConfig}


def run(args) -> None:
    run_study(load_config(StudyConfig, args.config, args.overrides))
