"""The ``refine-lm`` command: one entry point, one sub-command per job.

Every sub-command reads a config dataclass from ``--config FILE.yaml``, then applies overrides
given either as ``key=value`` words or as flags (``--key value``, ``--key=value``; dashes in a
flag become underscores; dotted keys reach nested sections; comma-separated values fill lists).
Unknown keys and wrong types are refused before anything runs.

A command lives in ``refine_lm/cli/<name>.py`` and provides ``run(args)`` (``args.config``,
``args.overrides``), ``CONFIGS`` (its config dataclasses, whose every setting ``--help`` lists with
type, default and documentation) and, if it takes positional arguments, ``add_arguments(parser)``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..config import ConfigError, describe_settings
from ..data.sources import DataError
from ..train.checkpoint import CheckpointError
from ..train.loop import TrainingError

# name -> one-line help; the module refine_lm.cli.<name> implements it
COMMANDS: dict[str, str] = {
    "demo": "the main job: evaluate the shipped base, mid-train it with REFINE and SFT, compare (make demo)",
    "generate": "sample continuations of a prompt from a model",
    "data": "prepare a corpus (data prepare); write generated long-context QA from its documents (data qa)",
    "pretrain": "next-token pretraining from scratch on a prepared corpus",
    "train": "continue training a checkpoint: --phase mid (refine|sft) or --phase post (refine|nested-sft|answer-sft)",
    "eval": "evaluate a model: NIAH, RULER QA, LongBench, perplexity by position; optional test-time training (--ttt)",
    "study": "a seeded grid of methods x seeds from one base: train, evaluate, report intervals and paired differences",
    "bench": "run a benchmark suite from benchmarks/ (prints side-by-side ratios)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refine-lm", description="REFINE for fast-weight language models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module = importlib.import_module(f"{__name__}.{name}")
        if hasattr(module, "add_arguments"):
            module.add_arguments(sub)
        sub.add_argument("--config", metavar="FILE", help="YAML file with the command's settings")
        sub.epilog = "Settings: key=value or --key value after the command (and its positional arguments)."
        for label, config in getattr(module, "CONFIGS", {}).items():
            sub.epilog += f"\n\n{label}settings (dotted keys reach nested sections):\n" + "\n".join(describe_settings(config))
    return parser


def parse_overrides(words: Sequence[str]) -> list[str]:
    """``["top_k=5", "--max-new-tokens", "8", "--do-sample=false"]`` -> ``["top_k=5", "max_new_tokens=8", "do_sample=false"]``."""
    overrides, i = [], 0
    while i < len(words):
        word = words[i]
        if not word.startswith("-") and "=" in word:
            overrides.append(word)
            i += 1
            continue
        if not word.startswith("--") or len(word) == 2:
            raise ConfigError(f"unexpected argument {word!r}: settings are key=value or --key value")
        key, sep, value = word[2:].partition("=")
        if not sep:
            if i + 1 < len(words) and not words[i + 1].startswith("--"):
                value, i = words[i + 1], i + 1
            else:
                value = "true"  # a bare flag switches a boolean on
        overrides.append(f"{key.replace('-', '_')}={value}")
        i += 1
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars are the ones that matter
    try:
        args.overrides = parse_overrides(extra)
        importlib.import_module(f"{__name__}.{args.command}").run(args)
    except (ConfigError, FileNotFoundError, DataError, CheckpointError, TrainingError) as e:
        print(f"refine-lm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
