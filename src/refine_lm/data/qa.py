"""Long-context question answering generated from corpus documents: post-training data and held-out tests.

An example is a window of natural text from one document of a split, with a few invented *facts*
placed at sentence or line boundaries, followed by a question about one of them:

    Read the text below, then answer the question that follows it in a few words.

    <text ... The ferry to Halmere departs from pier 47. ... text ... The ferry to Korvin departs
    from pier 12. ... text>

    Question: From which pier does the ferry to Halmere depart?
    Answer:                                                     -> " 47"

All facts of an example are of one kind and differ in their key (the town, the person, the
house), so the answer needs the key, not only the kind of question. Rows have the RULER QA format
(``prompt``, ``answer`` — a list of references —, ``max_seq_length``, ``task``), so the evaluation
suite reads them as ``ruler_qa`` files and the post-trainer can train on them or on any RULER QA file.

Training examples come from the train split, held-out ones from the validation or test split, so
the texts never overlap (documents are split by id). The wording is this project's own: it is
unlike the NIAH needles of the evaluation (ALGORITHM.md §6) and the recall episodes mixed into the corpus
(``synthetic.py``), whose source is never used as context.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError
from .dataset import PreparedCorpus
from .tokenizer import encode_texts

INSTRUCTION = "Read the text below, then answer the question that follows it in a few words."

_SYLLABLES = (
    "bar", "del", "fi", "gor", "hal", "jen", "kor", "lum", "mar", "nel", "pol", "rin", "sab", "tul", "vor", "wen",
    "yal", "zor", "ost", "ib", "cal", "dra", "mo", "ves",
)  # fmt: skip
_TOWN_ENDINGS = ("mere", "dale", "wick", "ton", "vin", "more", "port", "ley")


def _word(rng: np.random.Generator, syllables: int) -> str:
    return "".join(_SYLLABLES[i] for i in rng.integers(len(_SYLLABLES), size=syllables))


def _person(rng: np.random.Generator) -> str:
    return f"{_word(rng, 2).capitalize()} {_word(rng, 2).capitalize()}"


def _town(rng: np.random.Generator) -> str:
    return _word(rng, 1).capitalize() + str(rng.choice(_TOWN_ENDINGS))


def _number(rng: np.random.Generator, digits: int) -> str:
    return str(rng.integers(10 ** (digits - 1), 10**digits))


@dataclass(frozen=True)
class FactKind:
    """A family of facts: how to state one, how to ask about it, and how to draw its key and value."""

    statement: str  # with {key} and {value}
    question: str  # with {key}
    key: Callable[[np.random.Generator], str]
    value: Callable[[np.random.Generator], str]


FACT_KINDS: dict[str, FactKind] = {
    "pier": FactKind(
        "The ferry to {key} departs from pier {value}.",
        "From which pier does the ferry to {key} depart?",
        _town,
        lambda rng: _number(rng, 2),
    ),
    "vault": FactKind(
        "{key} left a sealed box in vault {value}.",
        "In which vault did {key} leave a sealed box?",
        _person,
        lambda rng: _number(rng, 3),
    ),
    "watchword": FactKind(
        "The watchword of House {key} is {value}.",
        "What is the watchword of House {key}?",
        lambda rng: _word(rng, 2).capitalize(),
        lambda rng: _word(rng, 2),
    ),
    "birthplace": FactKind(
        "{key} was born in the village of {value}.",
        "In which village was {key} born?",
        _person,
        _town,
    ),
}


@dataclass
class FactQAConfig:
    """How generated QA examples look.

    lengths: prompt lengths in tokens; each example is fitted to one of them, drawn uniformly (it
        comes out at most that long, a little shorter since the text is cut at sentence or line boundaries).
    facts: facts of one kind placed in each text; one is asked about, the others are distractors
        with other keys.
    kinds: fact kinds to draw from (``pier``, ``vault``, ``watchword``, ``birthplace``).
    value_pool: 0 (default): every value is drawn afresh; n > 0: the values of each kind come from a
        fixed pool of n (the same in every split), so the answer is one of a few words and only the
        fact's binding to its key says which — a task a tiny model learns in seconds (tests, smoke runs).
    exclude_sources: corpus sources never used as text (the corpus's own synthetic recall episodes).
    """

    lengths: list[int] = field(default_factory=lambda: [512, 1024])
    facts: int = 4
    kinds: list[str] = field(default_factory=lambda: list(FACT_KINDS))
    value_pool: int = 0
    exclude_sources: list[str] = field(default_factory=lambda: ["synthetic"])

    def __post_init__(self) -> None:
        if self.value_pool and self.value_pool < self.facts:
            raise ValueError(f"value_pool must be 0 or at least facts ({self.facts}), got {self.value_pool}")
        if not self.lengths or min(self.lengths) < 32:
            raise ValueError(f"lengths must be prompt lengths of at least 32 tokens, got {self.lengths}")
        if self.facts < 1:
            raise ValueError(f"facts must be >= 1, got {self.facts}")
        unknown = [k for k in self.kinds if k not in FACT_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty list of {', '.join(FACT_KINDS)}; unknown: {unknown}")


_BOUNDARY = re.compile(r"\n|(?<=[.!?;:])[ \t]+")


class FactQAGenerator:
    """Examples from the documents of one split of a prepared corpus. ``tokenizer`` (default: the
    corpus's) measures the prompt lengths: the model's, if it is another one.

    ``row(seed)`` is a function of the seed (a sequence of ints, e.g. ``(run seed, step, index)``)
    only, so training batches can be regenerated exactly on resume.
    """

    def __init__(self, corpus: PreparedCorpus | str | Path, split: str, cfg: FactQAConfig, tokenizer=None):
        self.corpus = corpus if isinstance(corpus, PreparedCorpus) else PreparedCorpus(corpus)
        self.split, self.cfg = split, cfg
        self.corpus_tokenizer = self.corpus.tokenizer()  # decodes the documents
        self.tokenizer = tokenizer if tokenizer is not None else self.corpus_tokenizer  # measures the prompts
        excluded = [s for s in cfg.exclude_sources if s in self.corpus.source_names]
        self.documents = list(self.corpus.documents(split, exclude_sources=excluded, min_tokens=64))
        if not self.documents:
            raise ConfigError(f"{self.corpus.path}: the {split} split has no document of 64+ tokens to build QA texts from")
        lengths = np.array([len(d.tokens) for d in self.documents], dtype=np.float64)
        self.weights = lengths / lengths.sum()  # a long document gives more windows

    def value_pool(self, kind: str) -> list[str]:
        """The fixed values of ``kind`` when ``value_pool`` is set (distinct, seeded by the kind's name only)."""
        rng = np.random.default_rng(list(kind.encode()))
        pool: list[str] = []
        while len(pool) < self.cfg.value_pool:
            value = FACT_KINDS[kind].value(rng)
            if value not in pool:
                pool.append(value)
        return pool

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _text(self, rng: np.random.Generator, tokens: int) -> str:
        """About ``tokens`` tokens of one document, cut at line or sentence boundaries where it has them."""
        doc = self.documents[int(rng.choice(len(self.documents), p=self.weights))]
        start = int(rng.integers(0, max(1, len(doc.tokens) - tokens)))
        text = self.corpus_tokenizer.decode(doc.tokens[start : start + tokens].tolist())
        cuts = [m.end() for m in _BOUNDARY.finditer(text)]
        if len(cuts) >= 2:  # drop the partial sentence at each end
            text = text[cuts[0] : cuts[-1]]
        return text.strip()

    def row(self, seed: Sequence[int], index: int | None = None) -> dict[str, Any]:
        """One RULER-QA-format row: ``prompt``, ``answer`` ([value]), ``max_seq_length``, ``task``, ``kind``, ``depth``."""
        rng = np.random.default_rng([int(s) for s in seed])
        length = int(rng.choice(self.cfg.lengths))
        kind_name = str(rng.choice(self.cfg.kinds))
        kind = FACT_KINDS[kind_name]
        keys: list[str] = []
        while len(keys) < self.cfg.facts:
            key = kind.key(rng)
            if key not in keys:
                keys.append(key)
        if self.cfg.value_pool:
            pool = self.value_pool(kind_name)
            values = [pool[i] for i in rng.choice(len(pool), size=len(keys), replace=False)]
        else:
            values = [kind.value(rng) for _ in keys]
        asked = int(rng.integers(len(keys)))
        statements = [kind.statement.format(key=k, value=v) for k, v in zip(keys, values)]
        question = kind.question.format(key=keys[asked])
        depths = rng.random(len(statements))  # where each fact goes, as a fraction of the text
        text_seed = int(rng.integers(1 << 62))

        def prompt_of(text_tokens: int) -> str:
            text = self._text(np.random.default_rng(text_seed), text_tokens)
            starts = [0, *(m.end() for m in _BOUNDARY.finditer(text) if m.end() < len(text))]  # sentence/line starts
            pieces, last = [], 0
            for depth, statement in sorted(zip(depths, statements)):
                cut = starts[min(int(np.searchsorted(starts, depth * len(text))), len(starts) - 1)]
                pieces.append(text[last:cut])
                pieces.append(statement + ("\n" if cut == 0 or text[cut - 1] == "\n" else " "))
                last = cut
            pieces.append(text[last:])
            return f"{INSTRUCTION}\n\n{''.join(pieces).strip()}\n\nQuestion: {question}\nAnswer:"

        fixed = self._count(prompt_of(0))
        if fixed > length:
            raise ConfigError(f"QA length {length} is too short: the prompt without text already has {fixed} tokens")
        budget = length - fixed
        prompt = prompt_of(budget)
        for _ in range(4):  # decoding and re-encoding at new boundaries can change the count a little
            excess = self._count(prompt) - length
            if excess <= 0:
                break
            budget = max(0, budget - excess - 2)
            prompt = prompt_of(budget)
        return {
            "index": index,
            "prompt": prompt,
            "answer": [values[asked]],
            "max_seq_length": length,
            "task": f"fact_qa/{kind_name}",
            "depth": float(depths[asked]),
        }

    def rows(self, count: int, seed: int = 0) -> list[dict[str, Any]]:
        """``count`` rows, row i from the seed ``(seed, i)``."""
        return [self.row((seed, i), index=i) for i in range(count)]


@dataclass
class QAFileConfig:
    """Settings of ``refine-lm data qa``: write generated QA rows to a file for ``refine-lm eval --tasks ruler_qa``.

    corpus: a prepared corpus directory (its tokenizer measures the prompt lengths).
    split: the documents to use: ``test`` (or ``validation``) for held-out evaluation; ``train`` is
        what post-training generates from.
    examples: rows to write.
    seed: seeds the rows (the same seed gives the same file).
    qa: how the examples look (lengths, facts, kinds).
    output: a ``.jsonl`` or ``.parquet`` file.
    """

    corpus: str = "runs/data/default"
    split: str = "test"
    examples: int = 100
    seed: int = 0
    qa: FactQAConfig = field(default_factory=FactQAConfig)
    output: str = "runs/qa/test.jsonl"

    def __post_init__(self) -> None:
        if self.examples < 1:
            raise ValueError(f"examples must be >= 1, got {self.examples}")


def write_qa_file(cfg: QAFileConfig) -> Path:
    """Generate ``cfg.examples`` rows and write them to ``cfg.output``."""
    from .records import write_records

    rows = FactQAGenerator(cfg.corpus, cfg.split, cfg.qa).rows(cfg.examples, cfg.seed)
    path = write_records(rows, cfg.output)
    lengths = [len(ids) for ids in encode_texts(PreparedCorpus(cfg.corpus).tokenizer(), [r["prompt"] for r in rows])]
    print(f"wrote {len(rows)} QA rows from the {cfg.split} split to {path} (prompts of {min(lengths)}-{max(lengths)} tokens)")
    return path
