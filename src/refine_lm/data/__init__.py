"""Data: corpus sources, document splits, tokenizers, synthetic recall episodes, training sequences.

``refine-lm data prepare`` (``prepare_corpus``) writes a prepared corpus directory; the trainer and
the evaluation suite read it with ``PreparedCorpus`` and ``SequenceDataset``. docs/DATA.md
describes the sources, the format and the rules (split, document boundaries, bad input).
"""

from .dataset import CorpusDocument, PreparedCorpus, SequenceDataset, StepBatchSampler
from .prepare import PrepareConfig, TokenizerSettings, assign_split, prepare_corpus
from .sources import BUILTIN_CORPORA, DataError, Document, SkipLog, SourceConfig, SourceMissing, read_source
from .synthetic import RecallEpisodeGenerator, SyntheticConfig
from .tokenizer import copy_tokenizer, encode_texts, load_tokenizer, save_tokenizer, train_tokenizer

__all__ = [
    "BUILTIN_CORPORA",
    "CorpusDocument",
    "DataError",
    "Document",
    "PrepareConfig",
    "PreparedCorpus",
    "RecallEpisodeGenerator",
    "SequenceDataset",
    "SkipLog",
    "SourceConfig",
    "SourceMissing",
    "StepBatchSampler",
    "SyntheticConfig",
    "TokenizerSettings",
    "assign_split",
    "copy_tokenizer",
    "encode_texts",
    "load_tokenizer",
    "prepare_corpus",
    "read_source",
    "save_tokenizer",
    "train_tokenizer",
]
