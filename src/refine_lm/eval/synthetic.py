"""Made-up text for generated evaluations: word lists, noise sentences, filler prose, a throwaway tokenizer.

Everything here is written for this project (no third-party word lists) and deterministic given a
``random.Random``. The byte-level BPE tokenizer is for tests, benchmarks and smoke runs of random
models: it round-trips any text exactly and trains in milliseconds, with nothing downloaded.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable

from ..config import ConfigError
from ..data.reserved import ADJECTIVES, NOISE_SENTENCES, NOUNS, words

_VERBS = words("built found painted carried repaired measured guarded visited sold mapped")
_PLACES = words("harbor market valley square orchard station library quarry meadow tower")


def word_pair(rng: random.Random) -> str:
    """A key like ``quiet-harbor``."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def seeded_uuid(rng: random.Random) -> str:
    """A UUID4 string drawn from ``rng`` (so the same seed gives the same UUID)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def filler_sentence(rng: random.Random) -> str:
    """One sentence of made-up prose (for 'real text' haystacks in tests and for tokenizer training)."""
    return (
        f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} was {rng.choice(_VERBS)} near the "
        f"{rng.choice(ADJECTIVES)} {rng.choice(_PLACES)} by a {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}."
    )


def filler_text(num_sentences: int, seed: int = 0) -> str:
    """``num_sentences`` of made-up prose, as one paragraph."""
    rng = random.Random(seed)
    return " ".join(filler_sentence(rng) for _ in range(num_sentences))


def tokenizer_training_text(num_sentences: int = 2000, seed: int = 0) -> list[str]:
    """Text covering what the generated tasks write: filler prose, noise sentences, digits, needle phrasing."""
    rng = random.Random(seed)
    lines = [filler_text(20, seed=seed + i) for i in range(num_sentences // 20)]
    lines += [" ".join(NOISE_SENTENCES)] * 20
    lines += [
        f"One of the special magic numbers for {word_pair(rng)} is: {rng.randrange(10**6, 10**7)}. "
        f"Question: Who {rng.choice(_VERBS)} it? Answer: {seeded_uuid(rng)}\n"
        for _ in range(200)
    ]
    return lines


def fit_count(tokens_of: Callable[[int], int], length: int, what: str) -> int:
    """The largest n with ``tokens_of(n) <= length`` (``tokens_of`` non-decreasing; n = 0 must fit).

    Used to grow a generated prompt (haystack sentences, distractor documents) to a token length.
    """
    if tokens_of(0) > length:
        raise ConfigError(f"{what}: length {length} is too short, the prompt without filler already has {tokens_of(0)} tokens")
    lo, hi = 0, 8  # invariant: tokens_of(lo) fits
    while tokens_of(hi) <= length:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if tokens_of(mid) <= length else (lo, mid)
    return lo
