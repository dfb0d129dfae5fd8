"""Retrieval episodes: retrieval taught as a skill, in many wordings, key kinds and value kinds.

An episode is exactly ``episode_tokens`` long and is cut into *segments* of 1/1, 1/2, 1/4 or 1/8 of
it (at least ``MIN_SEGMENT`` tokens), so one training window holds lookups over distances from a few tokens to the whole window.
Each segment is one self-contained task::

    [intro]  haystack . needle . haystack . needle ... haystack   question  answer-prefix  answer.

- tasks: ``single`` (one needle, asked), ``multikey`` (the asked needle among needles with other
  keys), ``multiquery`` (several needles, all asked at once), ``multivalue`` (one key, several
  values), ``list`` (a dense run of facts, then many of them asked one at a time by their answer
  prefixes alone: associative recall drilled), ``drill`` (facts back to back filling most of the
  segment, then every one of them asked by its answer prefix, in another order: a lookup every
  dozen tokens), ``pairs`` (associative recall in its barest form: pairs of one-token words,
  ``" lamp cedar, gull wheat, ..."``, then pairs asked again, the value after its key: a lookup every
  three tokens, how a small model first learns the lookup itself; the words are the corpus's
  one-token words minus every word an evaluation prompt uses, ``data/reserved.py``), ``quote`` (no
  wording at all: corpus text with invented facts in it, then the openings of some of its facts and
  sentences, each to be continued with what followed it: the lookup by the text itself, which a
  question in any wording reduces to once its answer prefix restates the fact);
- haystacks: corpus text (sentences of the split's own documents) or plain *noise* sentences
  cycled in a fixed order (a repetitive haystack, as RULER's noise haystack is);
- keys: hyphenated word pairs, invented people, places and codes; values: digit strings of 3-9
  digits (never 7), words and letter-digit codes;
- wordings: :data:`WORDINGS`, a family of statement / question / answer-prefix templates. The first
  is RULER's needle-in-a-haystack wording; every key, value word and noise sentence here is drawn
  from lists of this module that share nothing with the evaluation's (``eval/synthetic.py``), and a
  held-out wording family (``eval/niah.py``, ``niah.wording=heldout``) is never generated here, so
  retrieval can be measured on text the model has not seen the like of (a test checks both).

Answer spans (token offsets) are recorded, so held-out recall is scored on the answer tokens alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..config import ConfigError
from .reserved import reserved_words
from .synthetic import TASKS, Episode, EpisodeGenerator, RetrievalConfig, _digits, _word


@dataclass(frozen=True)
class Wording:
    """One way of stating a fact and asking for it. ``{key}``/``{keys}``: the key(s); ``{value}``: the
    value; ``{type}``: what the values are (plural: "numbers", "words", "codes")."""

    statement: str
    question: str
    answer_prefix: str
    intro: str = ""


WORDINGS = (
    Wording(
        "One of the special magic {type} for {key} is: {value}.",
        "What are all the special magic {type} for {keys} mentioned in the provided text?",
        "Answer: the special magic {type} for {keys} mentioned in the provided text are",
        "Some special magic {type} are hidden in the text below. Remember them: you will be asked for them at the end.",
    ),
    Wording("The {type} of {key}: {value}.", "Which {type} belong to {keys}?", "The {type} of {keys}:"),
    Wording("Remember that {key} goes with {value}.", "What goes with {keys}?", "{keys} goes with"),
    Wording("{key} = {value}.", "Look up {keys}.", "{keys} ="),
    Wording("The secret of {key} is {value}.", "Q: What is the secret of {keys}?", "A: The secret of {keys} is"),
    Wording("Record for {key}: {value}.", "Find the record for {keys}.", "Record for {keys}:"),
    Wording("Please note: {key} has the code {value}.", "What code does {keys} have?", "{keys} has the code"),
    Wording("Write down {value} for {key}.", "What was written down for {keys}?", "For {keys} it was"),
    Wording("In the list, {key} stands beside {value}.", "What stands beside {keys} in the list?", "Beside {keys} stands"),
    Wording("The {type} kept for {key} is {value}.", "Tell me the {type} kept for {keys}.", "The {type} kept for {keys} is"),
    Wording(
        "It is known that {key} is tied to {value}.",
        "What is {keys} tied to?",
        "{keys} is tied to",
        "Read the passage and remember what each name is tied to.",
    ),
    Wording("Entry {key} reads {value}.", "How does entry {keys} read?", "Entry {keys} reads"),
)

# Word lists of the training mixture only: none of these words is a key word, value word or noise word
# of the evaluation's generators (eval/synthetic.py), which a test checks.
KEY_ADJECTIVES = (
    "azure", "bronze", "cheerful", "dapper", "dizzy", "drowsy", "fancy", "fluffy", "frosty", "fuzzy", "gloomy",
    "grumpy", "hasty", "jagged", "jumpy", "lanky", "lumpy", "merry", "murky", "nimble", "plucky", "prickly", "quirky",
    "rowdy", "rugged", "salty", "shaggy", "snowy", "soggy", "spicy", "spotted", "stubborn", "thirsty", "tangled",
    "twisted", "wobbly", "woolly", "zesty", "crooked", "dreamy",
)  # fmt: skip
KEY_NOUNS = (
    "acorn", "alley", "anvil", "attic", "banjo", "beetle", "biscuit", "bucket", "cactus", "carpet", "cobweb", "comet",
    "crayon", "crystal", "dagger", "donkey", "ferret", "gadget", "goblet", "gravel", "hammock", "hatchet", "igloo",
    "jigsaw", "kayak", "lasso", "locket", "marionette", "mitten", "muffin", "nutmeg", "parrot", "pickle", "pigeon",
    "puddle", "quiver", "rafter", "satchel", "scarf", "skillet", "sparrow", "spindle", "teacup", "thimble", "tulip",
    "turret", "vessel", "wheelbarrow", "weasel", "yarn",
)  # fmt: skip
VALUE_WORDS = (
    "almond", "anise", "basil", "beryl", "bramble", "cedar", "chestnut", "clover", "coral", "cumin", "cypress",
    "daffodil", "ember", "fennel", "garnet", "ginger", "hazel", "heather", "jasper", "juniper", "lavender", "lilac",
    "magnolia", "maple", "marigold", "mint", "nettle", "onyx", "opal", "orchid", "paprika", "pewter", "poppy",
    "primrose", "quartz", "rosemary", "rust", "sage", "sapphire", "sorrel", "tansy", "thyme", "topaz", "tulipwood",
    "umber", "verbena", "willowherb", "yarrow", "zinnia", "birch",
)  # fmt: skip
NOISE_SENTENCES = (
    "The wind moves across the open field.",
    "A bird sings somewhere in the trees.",
    "The lamp on the desk gives a yellow light.",
    "Snow settles quietly on the fence posts.",
    "The boat rocks gently at the dock.",
    "A cat sleeps in a patch of sunlight.",
    "The road winds up toward the ridge.",
    "Water drips from the edge of the porch.",
    "The market opens early on the first day.",
    "Smoke curls up from the chimney.",
    "The night is cool and very still.",
    "Children play a game by the wall.",
)
# what may stand before a quote's opening (nothing, most often): leads of this module's own, none an evaluation's
QUOTE_LEADS = ("", "", "", "Again:", "Once more:", "Recall:", "Quote:", "As written:", "Copy:", "Echo:")
_PLACE_ENDINGS = ("ton", "field", "burg", "port", "vale", "moor", "gate", "shire")
_CODE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
MIN_SEGMENT = 256  # tokens: room for the longest task with three quarters of haystack
PAIRS_MIN_WORDS = 16  # one-token words the pairs task needs at least, for keys and for values each
_NUMBER_LENGTHS = (3, 4, 5, 6, 8, 9)  # never 7, the length of the evaluation's needle values

KEY_KINDS: dict[str, Callable[[np.random.Generator], str]] = {
    "pair": lambda rng: f"{rng.choice(KEY_ADJECTIVES)}-{rng.choice(KEY_NOUNS)}",
    "person": lambda rng: f"{_word(rng, 2)} {_word(rng, int(rng.integers(2, 4)))}",
    "place": lambda rng: _word(rng, 2) + str(rng.choice(_PLACE_ENDINGS)),
    "code": lambda rng: "".join(rng.choice(list(_CODE_LETTERS), size=2)) + "-" + _digits(rng, 2),
}
# value kind -> (the {type} word, maker)
VALUE_KINDS: dict[str, tuple[str, Callable[[np.random.Generator], str]]] = {
    "number": ("numbers", lambda rng: _digits(rng, int(rng.choice(_NUMBER_LENGTHS)))),
    "word": ("words", lambda rng: str(rng.choice(VALUE_WORDS))),
    "code": ("codes", lambda rng: "".join(rng.choice(list(_CODE_LETTERS), size=3)) + _digits(rng, 3)),
}


def _sentences(text: str) -> list[str]:
    return [s for s in (" ".join(p.split()) for p in re.split(r"(?<=[.!?;:])\s+", text)) if s]


def _join(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


def _interleave(sentences: list[list[int]], slots: dict[int, list[list[int]]]) -> list[int]:
    """The sentences' tokens with ``slots[i]`` (facts, needles) placed before sentence ``i``; ``slots[len(sentences)]``
    after the last."""
    tokens: list[int] = []
    for position in range(len(sentences) + 1):
        for inserted in slots.get(position, []):
            tokens += inserted
        if position < len(sentences):
            tokens += sentences[position]
    return tokens


class RetrievalEpisodeGenerator(EpisodeGenerator):
    """Builds retrieval episodes of exactly ``episode_tokens`` tokens from filler text and ``encode``."""

    def __init__(self, cfg: RetrievalConfig, episode_tokens: int, encode: Callable[[str], list[int]], filler: list[str]):
        if not filler:
            raise ConfigError("retrieval episodes need filler text, and the documents they draw it from gave none")
        if episode_tokens % 8 or episode_tokens < MIN_SEGMENT:
            raise ConfigError(
                f"retrieval episodes need episode_tokens >= {MIN_SEGMENT} and a multiple of 8, got {episode_tokens}"
            )
        self.cfg, self.episode_tokens, self.encode, self.filler = cfg, episode_tokens, encode, filler
        self._filler_sentences: dict[int, list[list[int]]] = {}
        self._noise = [encode(" " + s) for s in NOISE_SENTENCES]
        self._pair_words: tuple[list[int], list[int]] | None = None

    def pair_words(self) -> tuple[list[int], list[int]]:
        """Key and value tokens of ``pairs``: the corpus's words that are one token after a space (lower case,
        3+ letters, none an evaluation word), split in two disjoint halves."""
        if self._pair_words is None:
            reserved = reserved_words()
            seen = sorted({w for text in self.filler[:2000] for w in re.findall(r"\b[a-z]{3,}\b", text)} - reserved)
            tokens = [ids[0] for ids in (self.encode(" " + w) for w in seen) if len(ids) == 1]
            if len(tokens) < 2 * PAIRS_MIN_WORDS:
                raise ConfigError(
                    f"the pairs task needs {2 * PAIRS_MIN_WORDS} one-token words in the corpus, found {len(tokens)}"
                )
            self._pair_words = tokens[0::2], tokens[1::2]
        return self._pair_words

    def pairs(self, rng: np.random.Generator, n_tokens: int) -> Episode:
        """``n_tokens`` tokens: haystack, then key-value pairs (one per 16 tokens; one per 32 with digit-string
        values), then pairs asked again (``pairs_apart``: the pairs, haystack, then questions in the second half)."""
        keys, values = self.pair_words()
        comma, newline = self.encode(","), self.encode("\n")
        numbers = self.cfg.pair_numbers > 0 and rng.random() < self.cfg.pair_numbers
        n = min(max(2, n_tokens // (32 if numbers else 16)), len(keys), 64)  # the facts fill ~3/16 of the segment
        key_ids = rng.choice(len(keys), size=n, replace=False)
        if numbers:
            answers_of = [self.encode(" " + _digits(rng, int(rng.choice(_NUMBER_LENGTHS)))) for _ in range(n)]
        else:
            answers_of = [[values[v]] for v in rng.choice(len(values), size=n, replace=len(values) < n)]
        facts = [[keys[k], *value, *comma] for k, value in zip(key_ids, answers_of)]
        stated = [t for fact in facts for t in fact] + newline
        asked: list[list[int]] = []
        # the questions' room: all but a little haystack before the facts, or (apart) the second half
        room = n_tokens // 2 if self.cfg.pairs_apart else n_tokens - len(stated) - n_tokens // 16
        while room >= min(map(len, facts)):
            fact = facts[int(rng.integers(n))]
            if len(fact) > room:
                break
            asked.append(fact)
            room -= len(fact)
        haystack = [t for sentence in self._haystack(rng, n_tokens - len(stated) - sum(map(len, asked))) for t in sentence]
        tokens, answers = (stated + haystack if self.cfg.pairs_apart else haystack + stated), []
        for fact in asked:
            answers.append((len(tokens) + 1, len(tokens) + len(fact) - len(comma)))  # the value, after its key
            tokens += fact
        assert len(tokens) == n_tokens, (len(tokens), n_tokens)
        return Episode(np.asarray(tokens, dtype=np.int64), answers)

    def quote(self, rng: np.random.Generator, n_tokens: int) -> Episode:
        """``n_tokens`` tokens of corpus text with invented facts in it, then its sentences and facts quoted
        again: the opening of one (after an optional lead such as ``Again:``), and its rest to be copied.

        No wording and no question: the only way to continue a quote is to find where its opening was
        seen and copy what followed it, a lookup by the text itself that any wording reduces to once its
        answer prefix restates the fact. Facts are a key, a few words of a corpus sentence and a value
        (``"Ravel Tomsen and in the morning 3481."``); sentences are the haystack's own, cut anywhere."""
        facts, quotes = [], []  # quotes: (opening, rest) token lists
        for _ in range(int(rng.integers(1, max(2, n_tokens // 256 * 3) + 1))):
            words = (_sentences(self.filler[int(rng.integers(len(self.filler)))]) or ["and so"])[0].split()
            start = int(rng.integers(len(words)))
            middle = " ".join(words[start : start + int(rng.integers(2, 6))]).strip(".,;:!?").lower()
            value_kind = "number" if rng.random() < self.cfg.number_values else str(rng.choice(["word", "code"]))
            opening = self.encode(f" {KEY_KINDS[str(rng.choice(list(KEY_KINDS)))](rng)} {middle}")
            value = self.encode(" " + VALUE_KINDS[value_kind][1](rng))
            facts.append(opening + value + self.encode("."))
            quotes.append((opening, value))
        stated = sum(map(len, facts))
        room = n_tokens // 4  # the quotes' share of the segment
        haystack = self._haystack(np.random.default_rng(rng.integers(1 << 62)), n_tokens)  # corpus text or noise
        if len(set(map(tuple, haystack))) == len(haystack):  # a haystack without repeats can be quoted too
            ends = np.cumsum([len(sentence) for sentence in haystack])
            kept_at_least = min(n_tokens // 2, n_tokens - room - stated)  # the text kept below, whatever is asked
            early = [i for i in range(len(haystack)) if ends[i] <= kept_at_least and len(haystack[i]) >= 6]
            for i in rng.permutation(early)[: int(rng.integers(0, 4))]:
                sentence = haystack[int(i)]
                cut = int(rng.integers(3, len(sentence) - 1))
                quotes.append((sentence[:cut], sentence[cut : cut + 8]))
        order = rng.permutation(len(quotes))
        asked: list[tuple[list[int], list[int], list[int]]] = []
        for i in order:
            lead = self.encode("\n" + str(rng.choice(QUOTE_LEADS)))
            opening, rest = quotes[int(i)]
            if sum(len(a) + len(b) + len(c) for a, b, c in asked) + len(lead) + len(opening) + len(rest) > room:
                break
            asked.append((lead, opening, rest))
        asked_tokens = sum(len(a) + len(b) + len(c) for a, b, c in asked)
        body = n_tokens - stated - asked_tokens
        kept = []  # the haystack's sentences up to the body's length (the quoted sentences come early enough)
        total = 0
        for sentence in haystack:
            if total >= body:
                break
            kept.append(sentence[: body - total])
            total += len(kept[-1])
        slots: dict[int, list[list[int]]] = {}
        for fact in facts:
            slots.setdefault(int(rng.integers(len(kept) + 1)), []).append(fact)
        tokens = _interleave(kept, slots)
        answers: list[tuple[int, int]] = []
        for lead, opening, rest in asked:
            tokens += lead + opening
            answers.append((len(tokens), len(tokens) + len(rest)))
            tokens += rest
        assert len(tokens) == n_tokens, (len(tokens), n_tokens)
        return Episode(np.asarray(tokens, dtype=np.int64), answers)

    # ----- haystack ---------------------------------------------------------------------------
    def _haystack(self, rng: np.random.Generator, n_tokens: int) -> list[list[int]]:
        """Sentences (token lists) of exactly ``n_tokens`` tokens in all (the last one cut)."""
        out: list[list[int]] = []
        total = 0
        if rng.random() < self.cfg.noise_haystack:
            order = [self._noise[i] for i in rng.permutation(len(self._noise))[: int(rng.integers(4, len(self._noise) + 1))]]
            stream = (order[i % len(order)] for i in range(10**9))
        else:
            stream = self._corpus_stream(rng)
        while total < n_tokens:
            sentence = next(stream)
            out.append(sentence[: n_tokens - total])
            total += len(out[-1])
        return out

    def _corpus_stream(self, rng: np.random.Generator):
        while True:
            i = int(rng.integers(len(self.filler)))
            if i not in self._filler_sentences:
                self._filler_sentences[i] = [self.encode(" " + s) for s in _sentences(self.filler[i])]
            yield from self._filler_sentences[i]

    # ----- one segment ------------------------------------------------------------------------
    def _facts(
        self, rng: np.random.Generator, task: str, value_kind: str, n_tokens: int
    ) -> tuple[list[tuple[str, str]], list[int]]:
        """(key, value) facts and the indices of the asked ones, in the order asked."""
        key_kind = str(rng.choice(list(KEY_KINDS)))
        make_key, make_value = KEY_KINDS[key_kind], VALUE_KINDS[value_kind][1]
        n = {
            "single": 1,
            "multikey": int(rng.integers(2, 6)),
            "multiquery": int(rng.integers(2, 5)),
            "multivalue": int(rng.integers(2, 5)),
            "list": int(rng.integers(4, max(5, min(self.cfg.max_facts, n_tokens // 48)) + 1)),
            "drill": n_tokens // 16,  # more than fit: segment() keeps as many as the segment holds
        }[task]
        keys: list[str] = []
        for _ in range(50 * n):
            if len(keys) == n or (task == "multivalue" and keys):
                break
            key = make_key(rng)
            if key not in keys:
                keys.append(key)
        keys = keys * n if task == "multivalue" else keys
        values: list[str] = []
        for _ in range(50 * n):
            if len(values) == n:
                break
            value = make_value(rng)
            if value not in values:
                values.append(value)
        n = min(len(keys), len(values))
        facts = list(zip(keys[:n], values[:n]))
        if task in ("single", "multikey"):
            asked = [int(rng.integers(n))]
        elif task == "list":
            asked = [int(i) for i in rng.choice(n, size=int(rng.integers(1, min(n, self.cfg.max_asked) + 1)), replace=False)]
        elif task == "drill":
            asked = [int(i) for i in rng.permutation(n)]
        else:
            asked = list(range(n))
        return facts, asked

    def segment(self, rng: np.random.Generator, n_tokens: int, attempt: int = 0) -> Episode:
        """One task of exactly ``n_tokens`` tokens (its statements and questions take at most half of it, a list's
        three quarters)."""
        cfg = self.cfg
        task = TASKS[int(rng.choice(len(TASKS), p=np.asarray(cfg.tasks) / sum(cfg.tasks)))]
        if task == "pairs":
            return self.pairs(rng, n_tokens)
        if task == "quote":
            return self.quote(rng, n_tokens)
        wording = WORDINGS[0] if rng.random() < cfg.ruler_wording else WORDINGS[int(rng.integers(1, len(WORDINGS)))]
        r = rng.random()
        value_kind = "number" if r < cfg.number_values else ("word" if r < (1 + cfg.number_values) / 2 else "code")
        kind = VALUE_KINDS[value_kind][0]
        facts, asked = self._facts(rng, task, value_kind, n_tokens)
        intro = self.encode("\n\n" + wording.intro.format(type=kind)) if wording.intro else []
        needles = [self.encode(" " + wording.statement.format(type=kind, key=k, value=v)) for k, v in facts]
        # questions: one for all asked keys at once (multiquery / multivalue), else one per asked fact
        if task in ("multiquery", "multivalue"):
            keys = list(dict.fromkeys(facts[i][0] for i in asked))
            groups = [(keys, [facts[i][1] for i in asked])]
        else:
            groups = [([facts[i][0]], [facts[i][1]]) for i in asked]
        questions = []
        for keys, values in groups:
            keys_text = _join(keys)
            # a list is drilled by its answer prefixes alone (they name the key): many lookups per token
            prompt = "\n" if task in ("list", "drill") else "\n\n" + wording.question.format(type=kind, keys=keys_text) + "\n"
            prompt += wording.answer_prefix.format(type=kind, keys=keys_text)
            questions.append((self.encode(prompt), self.encode(" " + _join(values)), self.encode(".")))
        fixed = len(intro) + sum(map(len, needles)) + sum(len(a) + len(b) + len(c) for a, b, c in questions)
        limit = {"list": n_tokens * 3 // 4, "drill": n_tokens * 15 // 16}.get(task, n_tokens // 2)
        if task == "drill":  # keep the facts that fit, every one of them asked
            cost = [len(needles[i]) + sum(map(len, questions[asked.index(i)])) for i in range(len(facts))]
            keep = max(2, int(np.searchsorted(np.cumsum(cost), limit - len(intro), side="right")))
            order = [i for i in asked if i < keep]
            facts, needles = facts[:keep], needles[:keep]
            questions = [questions[asked.index(i)] for i in order]
            asked = order
            fixed = len(intro) + sum(map(len, needles)) + sum(len(a) + len(b) + len(c) for a, b, c in questions)
        if fixed > limit and task == "list":  # a list too long for a short segment: keep the asked facts and a few more
            keep = sorted(set(asked) | set(range(min(4, len(facts)))))
            facts = [facts[i] for i in keep]
            asked = [keep.index(i) for i in asked]
            needles = [needles[i] for i in keep]
            fixed = len(intro) + sum(map(len, needles)) + sum(len(a) + len(b) + len(c) for a, b, c in questions)
        if fixed > limit:  # still too long for a short segment: draw another task
            if attempt == 20:
                raise ConfigError(f"a {n_tokens}-token retrieval segment cannot hold a {task} task ({fixed} tokens)")
            return self.segment(rng, n_tokens, attempt + 1)
        haystack = self._haystack(rng, n_tokens - fixed)
        # needles at random depths; a list task states its facts in one run (associative recall)
        if task == "drill":  # facts first, the rest of the haystack between them and the questions
            slots = {0: needles}
        elif task == "list":
            at = int(rng.integers(len(haystack) + 1))
            slots = {at: [needles[i] for i in rng.permutation(len(needles))]}
        else:
            slots = {}
            for needle in needles:
                slots.setdefault(int(rng.integers(len(haystack) + 1)), []).append(needle)
        tokens = list(intro) + _interleave(haystack, slots)
        answers: list[tuple[int, int]] = []
        for prompt, answer, stop in questions:
            tokens += prompt
            answers.append((len(tokens), len(tokens) + len(answer)))
            tokens += answer + stop
        assert len(tokens) == n_tokens, (len(tokens), n_tokens)
        return Episode(np.asarray(tokens, dtype=np.int64), answers)

    def episode(self, rng: np.random.Generator) -> Episode:
        """Segments of 1/1, 1/2, 1/4 or 1/8 of the episode (never shorter than ``MIN_SEGMENT``), back to back."""
        weights = np.asarray(self.cfg.segments, dtype=float)
        count = min(2 ** int(rng.choice(4, p=weights / weights.sum())), self.episode_tokens // MIN_SEGMENT)
        size = self.episode_tokens // count
        parts = [self.segment(rng, size) for _ in range(count)]
        answers = [(s + i * size, e + i * size) for i, p in enumerate(parts) for s, e in p.answers]
        return Episode(np.concatenate([p.tokens for p in parts]), answers)
