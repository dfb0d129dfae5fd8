"""Synthetic retrieval-bearing documents, so that small models can learn long-range recall.

A synthetic document is a run of *recall episodes*, each exactly ``episode_tokens`` tokens long:

    [filler] fact [filler] fact ... fact          <- facts and distractors, in the first ~15-20%
    [long filler]  question: answer ...           <- about half of the facts asked, near the middle
    [long filler]  question: answer ...           <- every fact asked again, at the very end

Facts bind an invented person to an attribute ("the door code of Talen Morvay is 4821");
distractors are facts that are never asked (the same person with another attribute, or another
person with the same attribute), so recall needs the whole key. Filler is natural text sampled
from the corpus: from training documents for the training episodes, from validation documents for
the held-out validation episodes; test documents are never used.

Episodes are assembled in token space, so their length is exact and the token span of every
answer is known (``answers``, stored with the document): a training window that is a multiple of
``episode_tokens`` (and starts at a multiple of it, as windows do) always holds whole episodes.

The wording is deliberately unlike the evaluation needles of ALGORITHM.md §6 ("One of the special
magic {type} for {key} is: {value}." / "What are all the special magic {type} for {key} mentioned
in the provided text?"), the values are never 7-digit numbers or UUIDs, and keys are never word
pairs or UUIDs: the NIAH evaluation is not trained on.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..config import ConfigError

TASKS = ("single", "multikey", "multiquery", "multivalue", "list", "drill", "pairs", "quote")  # the tasks of retrieval episodes


@dataclass
class RetrievalConfig:
    """The mix of retrieval episodes (``synthetic.kind: retrieval``, see ``retrieval.py``).

    segments: relative weights of cutting an episode into 1, 2, 4 or 8 segments.
    tasks: relative weights of the tasks, in this order: single, multikey, multiquery, multivalue, list, drill,
        pairs, quote (``retrieval.py`` describes each).
    noise_haystack: share of segments whose haystack is noise sentences (else corpus text).
    ruler_wording: share of segments in the first wording of ``WORDINGS`` (RULER's); the rest draw
        uniformly from the others.
    number_values: share of segments with digit-string values (the rest: words and codes, equally).
    max_facts: facts in a ``list`` segment (at most; fewer when the segment is short).
    max_asked: facts of a ``list`` segment asked, one question each (at most).
    pair_numbers: share of ``pairs`` segments whose values are digit strings (several tokens each, copied
        after their one-token key) instead of one-token words.
    pairs_apart: ``pairs`` segments open with their facts and ask them only in their second half, with
        haystack between (else: a little haystack, the facts, then questions to the end), so that every
        lookup reaches at least a quarter of the segment back: past a sliding window or a LaCT chunk of that size.
    """

    segments: list[float] = field(default_factory=lambda: [0.3, 0.3, 0.2, 0.2])
    tasks: list[float] = field(default_factory=lambda: [0.3, 0.25, 0.15, 0.1, 0.2, 0.0, 0.0, 0.0])
    noise_haystack: float = 0.4
    ruler_wording: float = 0.35
    number_values: float = 0.6
    max_facts: int = 16
    max_asked: int = 6
    pair_numbers: float = 0.0
    pairs_apart: bool = False

    def __post_init__(self) -> None:
        if len(self.segments) != 4 or len(self.tasks) != len(TASKS):
            raise ValueError(f"retrieval.segments needs 4 weights and retrieval.tasks {len(TASKS)} ({', '.join(TASKS)})")
        if min(self.segments + self.tasks) < 0 or sum(self.segments) <= 0 or sum(self.tasks) <= 0:
            raise ValueError("retrieval.segments and retrieval.tasks must be non-negative weights with a positive sum")
        for name in ("noise_haystack", "ruler_wording", "number_values", "pair_numbers"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"retrieval.{name} must be in [0, 1]")
        if self.max_facts < 2 or self.max_asked < 1:
            raise ValueError("retrieval.max_facts must be >= 2 and retrieval.max_asked >= 1")


@dataclass
class SyntheticConfig:
    """Synthetic episodes mixed into the corpus.

    kind: ``recall`` (recall episodes, below: facts about invented people, asked in the middle and at
        the end) or ``retrieval`` (retrieval as a skill: many wordings, key and value kinds, haystacks
        and distances, ``retrieval.py``).
    train_fraction: share of the training split's tokens that are synthetic episodes (0 disables them).
    validation_episodes: held-out episodes added to the validation split (source ``synthetic``).
    episode_tokens: exact length of one episode. Use your training ``seq_len`` or a divisor of it, so
        every training window holds whole episodes (facts and the questions about them).
    episodes_per_document: episodes per synthetic document (its length is their product; windows
        longer than a document skip it, so keep the product >= the longest seq_len you will train with).
    facts: facts per episode that are asked about later.
    distractors: facts per episode that are never asked about.
    seed: seeds the episodes (names, values, templates, filler choice).
    retrieval: the mix of retrieval episodes (``kind: retrieval``).
    """

    kind: Literal["recall", "retrieval"] = "recall"
    train_fraction: float = 0.1
    validation_episodes: int = 64
    episode_tokens: int = 1024
    episodes_per_document: int = 16
    facts: int = 3
    distractors: int = 3
    seed: int = 0
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in [0, 1), got {self.train_fraction}")
        if self.episode_tokens < 32 or self.episodes_per_document < 1 or self.facts < 1 or self.distractors < 0:
            raise ValueError("need episode_tokens >= 32, episodes_per_document >= 1, facts >= 1, distractors >= 0")
        if self.validation_episodes < 0:
            raise ValueError("validation_episodes must be >= 0")


# Statements and questions. {name}: an invented person; {attr}: an attribute; the answer follows the question.
FACT_TEMPLATES = (
    "Remember this: the {attr} of {name} is {value}.",
    "For the record, {name}'s {attr} is {value}.",
    "A note pinned to the wall said that the {attr} of {name} is {value}.",
    "Keep in mind that {name}'s {attr} is {value}.",
    "It was written in the ledger: {name}, {attr}: {value}.",
)
QUESTION_TEMPLATES = (
    "Question: what is the {attr} of {name}? Answer:",
    "Recall the note about {name}. The {attr} of {name} is",
    "Q: {name}'s {attr}? A:",
    "From the ledger, {name}'s {attr} was",
)

_SYLLABLES = (
    "ta", "ren", "mor", "vay", "li", "sa", "dor", "en", "ka", "bel", "tor", "ni", "ve", "lo", "quin", "ha", "rud",
    "sel", "mi", "ar", "os", "ny", "fen", "gal", "tho", "bri", "cor", "dun", "ema", "ris", "val", "pe", "ter", "wyn",
    "ald", "ora", "is", "ul",
)  # fmt: skip
_TOWN_ENDINGS = ("ford", "wick", "by", "ham", "mere", "stead", "holt", "combe")
_COLOURS = (
    "amber", "crimson", "teal", "ochre", "violet", "indigo", "scarlet", "olive", "ivory", "cobalt", "saffron", "maroon",
)  # fmt: skip
_FRUITS = (
    "quince", "damson", "medlar", "apricot", "plum", "fig", "pear", "cherry", "mulberry", "gooseberry", "lemon", "melon",
)  # fmt: skip
_CODE_LETTERS = "BCDFGHJKLMNPQRSTVWXZ"


def _word(rng: np.random.Generator, n_syllables: int) -> str:
    return "".join(_SYLLABLES[i] for i in rng.integers(len(_SYLLABLES), size=n_syllables)).capitalize()


def _digits(rng: np.random.Generator, n: int) -> str:
    return str(rng.integers(1, 10)) + "".join(str(d) for d in rng.integers(10, size=n - 1))


# attribute -> value maker; numbers have 2-6 digits (never 7, the NIAH value length)
ATTRIBUTES: dict[str, Callable[[np.random.Generator], str]] = {
    "door code": lambda rng: _digits(rng, 4),
    "locker number": lambda rng: _digits(rng, 3),
    "ticket number": lambda rng: _digits(rng, 6),
    "room number": lambda rng: _digits(rng, 3),
    "favourite colour": lambda rng: str(rng.choice(_COLOURS)),
    "favourite fruit": lambda rng: str(rng.choice(_FRUITS)),
    "home town": lambda rng: _word(rng, 2) + str(rng.choice(_TOWN_ENDINGS)),
    "badge code": lambda rng: "".join(rng.choice(list(_CODE_LETTERS), size=2)) + "-" + _digits(rng, 4),
    "password": lambda rng: str(rng.choice(_FRUITS)) + _digits(rng, 2),
}


def _person(rng: np.random.Generator) -> str:
    return f"{_word(rng, 2)} {_word(rng, int(rng.integers(2, 4)))}"


@dataclass
class Fact:
    name: str
    attr: str
    value: str


def draw_facts(rng: np.random.Generator, n_facts: int, n_distractors: int) -> tuple[list[Fact], list[Fact]]:
    """``n_facts`` facts with distinct people, and distractors sharing a person or an attribute with them."""
    attrs = list(ATTRIBUTES)
    people: list[str] = []
    while len(people) < n_facts:
        person = _person(rng)
        if person not in people:
            people.append(person)
    facts = [Fact(p, a, ATTRIBUTES[a](rng)) for p, a in zip(people, rng.choice(attrs, size=n_facts))]
    taken = {(f.name, f.attr) for f in facts}
    distractors: list[Fact] = []
    while len(distractors) < n_distractors:
        anchor = facts[int(rng.integers(n_facts))]
        if rng.random() < 0.5:
            name, attr = anchor.name, str(rng.choice(attrs))  # same person, another attribute
        else:
            name, attr = _person(rng), anchor.attr  # another person, same attribute
        if (name, attr) not in taken:
            taken.add((name, attr))
            distractors.append(Fact(name, attr, ATTRIBUTES[attr](rng)))
    return facts, distractors


class FillerReservoir:
    """A bounded uniform sample of text chunks (runs of consecutive paragraphs) from the documents offered.

    Memory is bounded by ``capacity * max_chars`` whatever the corpus size (reservoir sampling).
    """

    def __init__(self, capacity: int = 2000, seed: int = 0, min_chars: int = 400, max_chars: int = 1500):
        self.capacity, self.min_chars, self.max_chars = capacity, min_chars, max_chars
        self.chunks: list[str] = []
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def offer(self, text: str) -> None:
        for chunk in self._chunks(text):
            self.seen += 1
            if len(self.chunks) < self.capacity:
                self.chunks.append(chunk)
            else:
                j = int(self._rng.integers(self.seen))
                if j < self.capacity:
                    self.chunks[j] = chunk

    def _chunks(self, text: str):
        current = ""
        for paragraph in re.split(r"\n[ \t]*\n", text):
            paragraph = paragraph.strip()
            if not paragraph:
                continue
            while len(paragraph) > self.max_chars:  # cut very long paragraphs at a line break, else at a space
                cut = paragraph.rfind("\n", self.min_chars, self.max_chars)
                cut = cut if cut > 0 else paragraph.rfind(" ", 0, self.max_chars)
                cut = cut if cut > 0 else self.max_chars
                yield paragraph[:cut].strip()
                paragraph = paragraph[cut:].strip()
            current = f"{current}\n\n{paragraph}" if current else paragraph
            if len(current) >= self.min_chars:
                yield current
                current = ""
        if current:
            yield current


@dataclass
class Episode:
    tokens: np.ndarray  # [episode_tokens] int64
    answers: list[tuple[int, int]]  # token spans [start, end) of the answers, within the episode


class EpisodeGenerator(abc.ABC):
    """What the corpus builder asks of a generator: ``episode(rng)`` of exactly ``episode_tokens`` tokens."""

    episode_tokens: int

    @abc.abstractmethod
    def episode(self, rng: np.random.Generator) -> Episode: ...

    def document(self, seed: tuple[int, ...], n_episodes: int) -> Episode:
        """``n_episodes`` episodes back to back; episode ``i`` is seeded by ``(*seed, i)``, so documents are reproducible."""
        parts = [self.episode(np.random.default_rng([*seed, i])) for i in range(n_episodes)]
        size = self.episode_tokens
        answers = [(s + i * size, e + i * size) for i, p in enumerate(parts) for s, e in p.answers]
        return Episode(np.concatenate([p.tokens for p in parts]), answers)


class RecallEpisodeGenerator(EpisodeGenerator):
    """Builds recall episodes of exactly ``cfg.episode_tokens`` tokens from filler chunks and ``encode``."""

    def __init__(self, cfg: SyntheticConfig, encode: Callable[[str], list[int]], filler: list[str]):
        if not filler:
            raise ConfigError("synthetic episodes need filler text, and the documents they draw it from gave none")
        self.cfg, self.encode, self.filler = cfg, encode, filler
        self.episode_tokens = cfg.episode_tokens
        self._filler_ids: dict[int, list[int]] = {}

    def _filler_tokens(self, rng: np.random.Generator, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            i = int(rng.integers(len(self.filler)))
            if i not in self._filler_ids:
                self._filler_ids[i] = self.encode("\n\n" + self.filler[i])
            out += self._filler_ids[i]
        return out[:n]

    def episode(self, rng: np.random.Generator) -> Episode:
        """One episode: facts early, about half asked in the middle, all asked at the end."""
        cfg = self.cfg
        facts, distractors = draw_facts(rng, cfg.facts, cfg.distractors)
        statements = [*facts, *distractors]
        statements = [statements[i] for i in rng.permutation(len(statements))]
        stated = [self.encode("\n\n" + str(rng.choice(FACT_TEMPLATES)).format(**vars(f))) for f in statements]
        mid = [facts[i] for i in sorted(rng.choice(len(facts), size=(len(facts) + 1) // 2, replace=False))]
        end = [facts[i] for i in rng.permutation(len(facts))]

        def question(fact: Fact) -> tuple[list[int], list[int], list[int]]:
            template = str(rng.choice(QUESTION_TEMPLATES))
            return (
                self.encode("\n\n" + template.format(name=fact.name, attr=fact.attr)),
                self.encode(" " + fact.value),
                self.encode("."),
            )

        mid_q, end_q = [question(f) for f in mid], [question(f) for f in end]
        fixed = sum(map(len, stated)) + sum(len(a) + len(b) + len(c) for a, b, c in mid_q + end_q)
        filler = cfg.episode_tokens - fixed
        if filler < cfg.episode_tokens // 4:
            raise ConfigError(
                f"synthetic.episode_tokens={cfg.episode_tokens} is too small: its {len(statements)} statements and "
                f"{len(mid_q) + len(end_q)} questions take {fixed} tokens and at least a quarter must be filler; "
                "raise episode_tokens or lower facts/distractors"
            )
        early_gap = int(0.15 * filler) // (len(stated) + 1)
        mid_gap = int(0.45 * filler)
        tokens: list[int] = []
        answers: list[tuple[int, int]] = []
        for piece in stated:
            tokens += self._filler_tokens(rng, early_gap) + piece
        tokens += self._filler_tokens(rng, early_gap + mid_gap)
        for prefix, answer, stop in mid_q:
            tokens += prefix
            answers.append((len(tokens), len(tokens) + len(answer)))
            tokens += answer + stop
        end_len = sum(len(a) + len(b) + len(c) for a, b, c in end_q)
        tokens += self._filler_tokens(rng, cfg.episode_tokens - len(tokens) - end_len)
        for prefix, answer, stop in end_q:
            tokens += prefix
            answers.append((len(tokens), len(tokens) + len(answer)))
            tokens += answer + stop
        assert len(tokens) == cfg.episode_tokens
        return Episode(np.asarray(tokens, dtype=np.int64), answers)
