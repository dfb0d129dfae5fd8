"""``refine-lm bench SUITE``: runs ``benchmarks/bench_SUITE.py`` from the source checkout."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


def add_arguments(parser) -> None:
    parser.add_argument("suite", help="which benchmarks/bench_<suite>.py to run, e.g. models")


def load_benchmark(suite: str):
    """The module of ``benchmarks/bench_<suite>.py`` (the benchmarks are scripts, not a package)."""
    script = BENCHMARKS / f"bench_{suite}.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: benchmarks run from a source checkout (pip install -e .)")
    spec = importlib.util.spec_from_file_location(f"bench_{suite}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def run(args) -> None:
    load_benchmark(args.suite).main(args.config, args.overrides)
