"""The ``refine-lm`` command: one entry point, one sub-command per job.

Every sub-command takes ``--config FILE.yaml`` plus ``key=value`` overrides (dotted keys reach
nested sections), validated against the command's config dataclass before anything runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..config import ConfigError


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file with the command's settings")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="settings that replace the file's (e.g. max_new_tokens=64)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refine-lm", description="REFINE for fast-weight language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="sample continuations of a prompt from a model")
    _add_config_arguments(generate)

    bench = commands.add_parser("bench", help="run a benchmark suite from benchmarks/ (prints side-by-side ratios)")
    bench.add_argument("suite", choices=["models"], help="models: chunkwise vs naive, decode speed, prefill memory")
    _add_config_arguments(bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars are the ones that matter
    try:
        if args.command == "generate":
            from .generate import run_generate

            run_generate(args.config, args.overrides)
        elif args.command == "bench":
            from .bench import run_bench

            run_bench(args.suite, args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as e:
        print(f"refine-lm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
