"""Needle in a haystack, RULER-style: generated, seeded prompts fitted to a token length.

A needle is "One of the special magic {type} for {key} is: {value}."; the prompt ends with
"What are all the special magic {type} for {key} mentioned in the provided text?" and an answer
prefix (RULER's wording; ``wording: heldout`` uses sentences of this project's that its shipped
training data never contains, to measure retrieval in a phrasing not seen in training). Variants:

- ``single``: one needle, one key asked;
- ``multikey``: the asked needle among ``num_distractors`` needles with other keys;
- ``multiquery``: ``num_queries`` needles with different keys, all asked at once;
- ``multivalue``: ``num_values`` needles with one key and different values.

Haystacks: ``noise`` (a few plain sentences, repeated), ``corpus`` (sentences of a text file, from
a seeded offset) or ``needles`` (distractor needles with other keys). The haystack is grown until
the whole prompt — intro, context, question, answer prefix, special tokens — has the requested
number of tokens (minus at most one haystack sentence) under the model's tokenizer.

Depths: every example has a grid depth d; its first asked needle sits after ``d%`` of the haystack
sentences and any further asked needles at the other grid depths, evenly spaced (so each asked
value has a depth, and a length x depth heatmap counts each value at its own depth). Distractor
needles go at seeded random depths. Score = fraction of the asked values found in the output,
ignoring case.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ..data.reserved import NOISE_SENTENCES, VALUE_WORDS
from .metrics import found_each
from .runner import Example
from .synthetic import fit_count, seeded_uuid, word_pair

VARIANTS = ("single", "multikey", "multiquery", "multivalue")


@dataclass(frozen=True)
class NIAHWording:
    """The sentences of a NIAH prompt: ``{type}`` is the kind of values ("numbers", "words", "uuids")."""

    intro: str
    needle: str
    question: str
    answer_prefix: str


WORDINGS = {
    # RULER's wording
    "ruler": NIAHWording(
        "Some special magic {type} are hidden in the text below. Remember them: you will be asked for them at the end.",
        "One of the special magic {type} for {key} is: {value}.",
        "What are all the special magic {type} for {keys} mentioned in the provided text?",
        "Answer: the special magic {type} for {keys} mentioned in the provided text are",
    ),
    # a wording of this project's that no training data of its own uses (a test checks the pretraining mixtures):
    # retrieval measured on phrasing a model has not seen
    "heldout": NIAHWording(
        "Hidden notes are scattered through the text below. Each pairs a name with some {type}.",
        "Hidden note: {key} is paired with {value}.",
        "Which hidden {type} are paired with {keys}?",
        "Reply: {keys} is paired with",
    ),
}
TEMPLATE = "{intro}\n\n{context}\n\n{question}\n{answer_prefix}"


@dataclass
class NIAHConfig:
    """How NIAH prompts are generated.

    haystack: ``noise`` (repeated plain sentences), ``corpus`` (text from ``corpus_path``) or
        ``needles`` (distractor needles with other keys).
    corpus_path: a ``.txt`` file, a JSONL/JSON/parquet file with a ``text`` column, or a directory of
        them; needed for the ``corpus`` haystack.
    wording: ``ruler`` (RULER's sentences) or ``heldout`` (a wording no shipped training data uses).
    keys: ``words`` (adjective-noun pairs) or ``uuids``.
    values: ``numbers`` (7 digits), ``words`` or ``uuids``.
    depths: needle depths in percent of the haystack; evenly spread over 0-100 by default.
    samples_per_depth: examples per (length, depth) cell.
    num_distractors: needles with other keys in ``multikey``.
    num_queries: keys asked at once in ``multiquery``.
    num_values: values of the one key in ``multivalue``.
    max_new_tokens: generation budget per answer.
    """

    haystack: Literal["noise", "corpus", "needles"] = "noise"
    corpus_path: str | None = None
    wording: Literal["ruler", "heldout"] = "ruler"
    keys: Literal["words", "uuids"] = "words"
    values: Literal["numbers", "words", "uuids"] = "numbers"
    depths: list[float] = field(default_factory=lambda: [0.0, 12.5, 25.0, 37.5, 50.0, 62.5, 75.0, 87.5, 100.0])
    samples_per_depth: int = 1
    num_distractors: int = 3
    num_queries: int = 4
    num_values: int = 4
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        if not self.depths or any(not 0 <= d <= 100 for d in self.depths):
            raise ValueError(f"niah.depths must be a non-empty list of percentages in [0, 100], got {self.depths}")
        if len(set(self.depths)) != len(self.depths):
            raise ValueError(f"niah.depths has repeated values: {self.depths}")
        for name in ("samples_per_depth", "num_queries", "num_values", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"niah.{name} must be >= 1")
        if self.num_distractors < 0:
            raise ValueError("niah.num_distractors must be >= 0")
        if self.haystack == "corpus" and not self.corpus_path:
            raise ValueError("niah.haystack=corpus needs niah.corpus_path (a text/JSONL/parquet file or a directory)")


@dataclass
class Needle:
    key: str
    value: str
    depth: float  # percent of the haystack sentences before it
    asked: bool

    def text(self, kind: str, wording: NIAHWording) -> str:
        return wording.needle.format(type=kind, key=self.key, value=self.value)


def split_sentences(text: str) -> list[str]:
    """Sentences of a text (split after . ! ? followed by whitespace), whitespace collapsed."""
    return [s for s in (" ".join(p.split()) for p in re.split(r"(?<=[.!?])\s+", text)) if s]


class NIAHBuilder:
    """Builds the NIAH examples of one variant for one tokenizer.

    ``corpus``: the sentences of the real-text haystack (needed when ``cfg.haystack == "corpus"``).
    """

    def __init__(self, variant: str, cfg: NIAHConfig, tokenizer, seed: int = 0, corpus: Sequence[str] | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"unknown NIAH variant {variant!r} (known: {', '.join(VARIANTS)})")
        if cfg.haystack == "corpus" and not corpus:
            raise ValueError("the corpus haystack needs sentences of real text (niah.corpus_path)")
        self.variant, self.cfg, self.tokenizer, self.seed = variant, cfg, tokenizer, seed
        self.corpus = list(corpus or [])
        self.kind = cfg.values  # "numbers", "words" or "uuids": the {type} of the prompts
        self.wording = WORDINGS[cfg.wording]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def examples(self, length: int, limit: int | None = None) -> list[Example]:
        """The examples at one prompt length: ``samples_per_depth`` per grid depth, or ``limit`` of them
        picked evenly over the depths (first samples first)."""
        cells = [(d, s) for s in range(self.cfg.samples_per_depth) for d in range(len(self.cfg.depths))]
        if limit is not None and limit < len(cells):
            cells = [cells[i * len(cells) // limit] for i in range(limit)]
        return [self.example(length, d, s) for d, s in cells]

    def example(self, length: int, depth_index: int, sample: int) -> Example:
        rng = random.Random(f"niah/{self.seed}/{self.variant}/{self.cfg.haystack}/{length}/{depth_index}/{sample}")
        needles = self._needles(rng, depth_index)
        asked_keys = list(dict.fromkeys(n.key for n in needles if n.asked))
        keys_text = _join(asked_keys)
        frame = {
            "intro": self.wording.intro.format(type=self.kind),
            "question": self.wording.question.format(type=self.kind, keys=keys_text),
            "answer_prefix": self.wording.answer_prefix.format(type=self.kind, keys=keys_text),
        }
        taken = {n.key for n in needles} | {n.value for n in needles}
        haystack = self._haystack(rng, taken)
        fit = lambda n: TEMPLATE.format(context=self._context(haystack(n), needles)[0], **frame)
        count = fit_count(lambda n: self.count_tokens(fit(n)), length, f"NIAH {self.variant}")
        context, starts = self._context(haystack(count), needles)
        prompt = TEMPLATE.format(context=context, **frame)
        asked = [n for n in needles if n.asked]
        return Example(
            id=f"{length}/{self.cfg.depths[depth_index]:g}/{sample}",
            task=f"niah_{self.variant}",
            prompt=prompt,
            references=[n.value for n in asked],
            max_new_tokens=self.cfg.max_new_tokens,
            first_line=False,
            truncate=False,
            meta={
                "length": length,
                "depth": self.cfg.depths[depth_index],
                "value_depths": [n.depth for n in asked],
                "haystack_sentences": count,
                "needles": [
                    {"key": n.key, "value": n.value, "depth": n.depth, "asked": n.asked, "char_start": s}
                    for n, s in zip(needles, starts)
                ],
            },
        )

    # ----- pieces -----------------------------------------------------------------------------
    def _key(self, rng: random.Random) -> str:
        return word_pair(rng) if self.cfg.keys == "words" else seeded_uuid(rng)

    def _value(self, rng: random.Random) -> str:
        if self.cfg.values == "numbers":
            return str(rng.randrange(1_000_000, 10_000_000))
        return rng.choice(VALUE_WORDS) if self.cfg.values == "words" else seeded_uuid(rng)

    def _distinct(self, make: Callable[[random.Random], str], rng: random.Random, count: int, taken: set[str]) -> list[str]:
        out: list[str] = []
        for _ in range(100 * count + 100):
            if len(out) == count:
                return out
            item = make(rng)
            if item not in taken:
                taken.add(item)
                out.append(item)
        raise ValueError(f"could not draw {count} distinct NIAH {self.cfg.keys} keys / {self.cfg.values} values")

    def _needles(self, rng: random.Random, depth_index: int) -> list[Needle]:
        cfg, grid = self.cfg, self.cfg.depths
        n_asked = {"single": 1, "multikey": 1, "multiquery": cfg.num_queries, "multivalue": cfg.num_values}[self.variant]
        depths = [grid[(depth_index + j * len(grid) // n_asked) % len(grid)] for j in range(n_asked)]
        taken: set[str] = set()
        if self.variant == "multivalue":
            keys = self._distinct(self._key, rng, 1, taken) * n_asked
        else:
            keys = self._distinct(self._key, rng, n_asked, taken)
        values = self._distinct(self._value, rng, n_asked, taken)
        needles = [Needle(k, v, d, True) for k, v, d in zip(keys, values, depths)]
        if self.variant == "multikey":
            for key in self._distinct(self._key, rng, cfg.num_distractors, taken):
                needles.append(Needle(key, self._distinct(self._value, rng, 1, taken)[0], round(rng.uniform(0, 100), 2), False))
        return needles

    def _haystack(self, rng: random.Random, taken: set[str]) -> Callable[[int], list[str]]:
        """A function n -> the first n haystack sentences (one fixed stream per example)."""
        if self.cfg.haystack == "noise":
            return lambda n: [NOISE_SENTENCES[i % len(NOISE_SENTENCES)] for i in range(n)]
        if self.cfg.haystack == "corpus":
            offset = rng.randrange(len(self.corpus))
            return lambda n: [self.corpus[(offset + i) % len(self.corpus)] for i in range(n)]
        stream: list[str] = []  # distractor needles, drawn on demand, never with an asked key or value
        taken = set(taken)

        def needles(n: int) -> list[str]:
            while len(stream) < n:
                key = self._distinct(self._key, rng, 1, taken)[0]
                value = self._distinct(self._value, rng, 1, taken)[0]
                stream.append(self.wording.needle.format(type=self.kind, key=key, value=value))
            return stream[:n]

        return needles

    def _context(self, sentences: list[str], needles: list[Needle]) -> tuple[str, list[int]]:
        """The haystack with the needles inserted at their depths; also each needle's character offset."""
        n = len(sentences)
        slots: dict[int, list[int]] = {}
        for i, needle in enumerate(needles):
            slots.setdefault(round(needle.depth / 100 * n), []).append(i)
        pieces: list[str] = []
        starts = [0] * len(needles)
        offset = 0
        for position in range(n + 1):
            for i in slots.get(position, []):
                starts[i] = offset
                pieces.append(needles[i].text(self.kind, self.wording))
                offset += len(pieces[-1]) + 1
            if position < n:
                pieces.append(sentences[position])
                offset += len(pieces[-1]) + 1
        return " ".join(pieces), starts


def _join(keys: Sequence[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


def score_niah(example: Example, answer: str) -> dict:
    """Fraction of the asked values found in the answer, and which ones."""
    found = found_each(answer, example.references)
    return {"score": sum(found) / len(found), "found": found}


def heatmap_grid(records: Sequence[dict], lengths: Sequence[int], depths: Sequence[float]) -> list[list[float | None]]:
    """``[len(lengths)][len(depths)]`` fraction of asked values found at each (length, value depth); None if no value."""
    hits = {(length, d): [0, 0] for length in lengths for d in depths}
    for record in records:
        meta = record["meta"]
        for depth, found in zip(meta["value_depths"], record["found"]):
            cell = hits.get((meta["length"], depth))
            if cell is not None:
                cell[0] += int(found)
                cell[1] += 1
    return [[hits[(n, d)][0] / hits[(n, d)][1] if hits[(n, d)][1] else None for d in depths] for n in lengths]
