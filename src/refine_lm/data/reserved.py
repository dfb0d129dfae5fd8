"""The words evaluation prompts are made of (NIAH and synthetic QA keys, values and noise haystacks).

They live here, below the evaluation, so that the training data can be checked against them and
leave them out: the ``pairs`` retrieval task draws its words from the corpus minus these.
"""

from __future__ import annotations


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


def reserved_words() -> frozenset[str]:
    """Every word of the lists above, lower-cased (the noise sentences split into words)."""
    noise = {w.strip(".,").lower() for sentence in NOISE_SENTENCES for w in sentence.split()}
    return frozenset({*ADJECTIVES, *NOUNS, *VALUE_WORDS, *noise})
