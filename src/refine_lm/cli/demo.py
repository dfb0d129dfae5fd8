"""``refine-lm demo``: base -> evaluate -> REFINE and SFT mid-training -> evaluate -> report (``make demo``)."""

from __future__ import annotations

from ..config import load_config
from ..demo import DemoConfig, run_demo

CONFIGS = {"": DemoConfig}


def run(args) -> None:
    run_demo(load_config(DemoConfig, args.config, args.overrides))
