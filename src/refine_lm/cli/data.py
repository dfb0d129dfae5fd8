"""``refine-lm data prepare``: build a prepared corpus (token files, index, tokenizer, manifest) from the configured sources."""

from __future__ import annotations

from ..config import ConfigError, load_config
from ..data import DataError, PrepareConfig, prepare_corpus


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["prepare"], help="prepare: read, split, tokenise and write the corpus")


def run(args) -> None:
    cfg = load_config(PrepareConfig, args.config, args.overrides)
    try:
        prepare_corpus(cfg)
    except DataError as e:
        raise ConfigError(str(e)) from None
