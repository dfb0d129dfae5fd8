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


def words(text: str) -> tuple[str, ...]:
    """A word list written as one space-separated string."""
    return tuple(text.split())


ADJECTIVES = words(
    "amber ancient bitter bold brave brisk calm clever cold crimson curious dark distant dusty eager early "
    "elegant empty faint fierce fragile frozen gentle giant golden grand hidden hollow humble icy idle jolly "
    "keen lazy little lively lonely loud lucky marble mellow misty modest narrow noble odd pale patient plain "
    "polite proud quick quiet rapid rare restless rough round rusty sacred scarlet secret sharp shiny silent "
    "silver simple sleepy slow smooth soft solemn sour spare steady stormy strange sturdy sunny swift tall "
    "tender thin tidy tiny velvet vivid warm weary wild windy wise wooden young zealous"
)

NOUNS = words(
    "anchor apple arrow badge barrel basket beacon bell blanket boat bridge brook button cabin candle canyon "
    "castle cellar chair chimney clock cloud compass copper cottage crown desert diamond dragon drum eagle "
    "engine falcon feather fence fiddle forest fountain garden glacier glove harbor hammer helmet island "
    "jacket kettle ladder lantern lemon library lighthouse meadow mirror mountain needle orchard otter "
    "paddle palace pebble pepper pillow pine planet pocket pond quarry rabbit ribbon river rocket saddle "
    "sail shadow shelf shovel signal spoon squirrel statue stone summit teapot temple thistle tower trumpet "
    "tunnel valley violin wagon whistle willow window wizard"
)

# NIAH word values: a vocabulary of its own, so no key, filler or noise sentence contains a value.
VALUE_WORDS = words(
    "apricot avocado badger bison buffalo cashew cobalt coconut cougar coyote cricket dolphin falafel flamingo "
    "gazelle giraffe guava hazelnut hedgehog iguana jaguar kiwi koala lobster lynx macaw mango marmot meerkat "
    "mongoose moose nectarine ocelot octopus papaya parsnip peacock pelican penguin pistachio platypus puffin "
    "quince raccoon radish saffron salmon sardine sloth tamarind tapir toucan turnip vanilla walnut walrus wombat "
    "yak zebra"
)

# Haystack filler: plain statements with no numbers, names or keys a needle could be confused with.
NOISE_SENTENCES = (
    "The kettle hums on a low flame.",
    "Clouds drift slowly over the hills.",
    "A path of flat stones leads to the gate.",
    "Rain taps softly on the roof.",
    "The old clock in the hall keeps good time.",
    "Bread cools on the kitchen table.",
    "Leaves gather in the corner of the yard.",
    "The river bends twice before the bridge.",
)

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
