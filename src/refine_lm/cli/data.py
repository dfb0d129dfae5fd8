"""``refine-lm data prepare``: build a prepared corpus (token files, index, tokenizer, manifest) from the configured sources.
``refine-lm data qa``: write generated long-context QA rows (RULER QA format) from a prepared corpus's documents."""

from __future__ import annotations

from ..config import ConfigError, load_config
from ..data import DataError, PrepareConfig, prepare_corpus
from ..data.qa import QAFileConfig, write_qa_file

CONFIGS = {"data prepare ": PrepareConfig, "data qa ": QAFileConfig}


def add_arguments(parser) -> None:
    parser.add_argument(
        "action",
        choices=["prepare", "qa"],
        help="prepare: read, split, tokenise and write the corpus; qa: write generated QA rows from one of its splits",
    )


def run(args) -> None:
    if args.action == "qa":
        write_qa_file(load_config(QAFileConfig, args.config, args.overrides))
        return
    cfg = load_config(PrepareConfig, args.config, args.overrides)
    try:
        prepare_corpus(cfg)
    except DataError as e:
        raise ConfigError(str(e)) from None
