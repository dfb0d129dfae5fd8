"""Retrieval episodes: exact lengths, answers that are the asked values, every task and segment size,
and a training mixture that holds nothing of the evaluation's needles, keys, values, haystack or
held-out wording."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from refine_lm.config import ConfigError, from_dict
from refine_lm.data import PreparedCorpus, prepare_corpus, train_tokenizer
from refine_lm.data import reserved as eval_text  # the words evaluation prompts are made of
from refine_lm.data.prepare import PrepareConfig
from refine_lm.data.retrieval import KEY_ADJECTIVES, KEY_NOUNS, NOISE_SENTENCES, VALUE_WORDS, WORDINGS, RetrievalEpisodeGenerator
from refine_lm.data.synthetic import RetrievalConfig, SyntheticConfig
from refine_lm.eval.niah import WORDINGS as NIAH_WORDINGS
from refine_lm.eval.niah import NIAHBuilder, NIAHConfig

from .data_helpers import document_text, small_config, write_text_corpus

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokenizer():
    texts = [document_text(i, 6) for i in range(20)] + [" ".join(NOISE_SENTENCES)] * 5
    return train_tokenizer(texts, 700)


@pytest.fixture(scope="module")
def generator(tokenizer):
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    return RetrievalEpisodeGenerator(RetrievalConfig(), 1024, encode, [document_text(i, 4) for i in range(8)])


def test_episodes_are_exact_reproducible_and_answers_are_the_asked_values(generator, tokenizer):
    a, b = generator.document((3, 0, 1), 4), generator.document((3, 0, 1), 4)
    assert len(a.tokens) == 4096 and (a.tokens == b.tokens).all() and a.answers == b.answers
    for start, end in a.answers:
        answer = tokenizer.decode(a.tokens[start:end].tolist())
        after = tokenizer.decode(a.tokens[end : end + 1].tolist())
        assert after == "." and answer.startswith(" ")
        context = tokenizer.decode(a.tokens[:start].tolist())
        for value in re.split(r", | and ", answer.strip()):
            assert value in context  # every answered value was stated before it is asked


def test_every_task_segment_size_and_wording_occurs(generator, tokenizer):
    text = "".join(tokenizer.decode(generator.episode(np.random.default_rng(i)).tokens.tolist()) for i in range(60))
    for wording in WORDINGS:
        opening = wording.answer_prefix.split("{")[0] or wording.answer_prefix.split("}")[-1]
        assert opening.strip() in text
    assert any(s in text for s in NOISE_SENTENCES) and "Hidden" not in text
    sizes = {len(generator.segment(np.random.default_rng(i), n).tokens) for i in range(5) for n in (256, 512, 1024)}
    assert sizes == {256, 512, 1024}


def test_a_drill_asks_every_fact_it_states_in_another_order_and_fills_its_segment(tokenizer):
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    drills = RetrievalConfig(tasks=[0, 0, 0, 0, 0, 1, 0, 0])
    generator = RetrievalEpisodeGenerator(drills, 1024, encode, [document_text(i, 4) for i in range(8)])
    reordered = False
    for seed in range(6):
        segment = generator.segment(np.random.default_rng(seed), 512)
        answers = [tokenizer.decode(segment.tokens[s:e].tolist()).strip() for s, e in segment.answers]
        context = tokenizer.decode(segment.tokens[: segment.answers[0][0]].tolist())
        assert len(answers) >= 2 and all(v in context for v in answers)  # every fact stated before the questions
        assert len(set(answers)) == len(answers)  # each fact asked once
        reordered |= answers != sorted(answers, key=context.index)
        # facts from the start, questions to the end: little haystack in a drill
        assert context.index(answers[0]) < len(context) // 2 and segment.answers[-1][1] >= 512 * 7 // 8
    assert reordered


def test_short_segments_that_cannot_hold_a_task_are_refused():
    with pytest.raises(ConfigError, match="episode_tokens >= 256"):
        RetrievalEpisodeGenerator(RetrievalConfig(), 100, lambda s: list(s.encode()), ["filler text."])
    with pytest.raises(ValueError, match=r"retrieval\.tasks 8"):
        RetrievalConfig(tasks=[1.0, 1.0])


def test_the_training_vocabulary_shares_nothing_with_the_evaluation():
    eval_words = set(eval_text.ADJECTIVES) | set(eval_text.NOUNS) | set(eval_text.VALUE_WORDS)
    ours = set(KEY_ADJECTIVES) | set(KEY_NOUNS) | set(VALUE_WORDS)
    assert not ours & eval_words
    assert not set(NOISE_SENTENCES) & set(eval_text.NOISE_SENTENCES)


@pytest.mark.parametrize(
    ("mixture", "uses_ruler_wording"),
    [
        ("pairs", False),
        ("pairs_apart", False),
        ("digits", False),
        ("digits_apart", False),
        ("bridge", True),
        ("bridge_apart", True),
        ("pretrain", True),
        ("quote", True),
    ],
)
def test_the_pretraining_mixture_holds_no_evaluation_key_value_haystack_or_heldout_wording(tmp_path, mixture, uses_ruler_wording):
    """The retrieval corpus prepared with the settings of configs/data/<mixture>.yaml (on generated text): its training
    split never contains an evaluation key, value word, noise sentence, a 7-digit number (the NIAH value
    length) or any sentence of the held-out NIAH wording — while the needle stages do contain RULER's wording."""
    shipped = yaml.safe_load((REPO / f"configs/data/{mixture}.yaml").read_text())["synthetic"]
    write_text_corpus(tmp_path / "text", n_docs=30)
    synthetic = from_dict(
        SyntheticConfig, {**shipped, "episode_tokens": min(shipped["episode_tokens"], 1024), "episodes_per_document": 2}
    )
    cfg = small_config(tmp_path / "text", tmp_path / "out", synthetic=synthetic)
    assert isinstance(cfg, PrepareConfig) and cfg.synthetic.kind == "retrieval"
    corpus = PreparedCorpus(prepare_corpus(cfg))
    tokenizer = corpus.tokenizer()
    docs = [d for d in corpus.documents("train", sources=["synthetic"])]
    assert sum(len(d.tokens) for d in docs) >= 0.45 * sum(len(d.tokens) for d in corpus.documents("train"))
    text = "\n".join(tokenizer.decode(d.tokens.tolist()) for d in docs)
    pairs = re.findall(r"\b([a-z]+)-([a-z]+)\b", text)
    assert pairs or not uses_ruler_wording
    assert not [p for p in pairs if p[0] in eval_text.ADJECTIVES and p[1] in eval_text.NOUNS]
    answers = {tokenizer.decode(d.tokens[s:e].tolist()).strip() for d in docs for s, e in d.answers}
    answer_words = {w for a in answers for w in re.split(r", | and ", a)}
    assert answer_words and not answer_words & set(eval_text.VALUE_WORDS)
    assert not any(s in text for s in eval_text.NOISE_SENTENCES)
    assert not re.search(r"(?<!\d)\d{7}(?!\d)", text)
    heldout = NIAH_WORDINGS["heldout"]
    for template in (heldout.intro, heldout.needle, heldout.question, heldout.answer_prefix):
        for piece in re.split(r"\{\w+\}", template):
            if len(piece.strip()) > 4:
                assert piece.strip() not in text, piece
    assert "Hidden" not in text and "paired" not in text
    ruler = NIAH_WORDINGS["ruler"]
    assert (ruler.answer_prefix.split("{")[0] in text and "mentioned in the provided text are" in text) == uses_ruler_wording


def test_heldout_wording_builds_prompts_with_its_own_sentences(eval_tokenizer):
    builder = NIAHBuilder("multikey", NIAHConfig(wording="heldout", depths=[0.0, 50.0]), eval_tokenizer, seed=1)
    example = builder.examples(512)[0]
    assert "Hidden note:" in example.prompt and "special magic" not in example.prompt
    assert example.prompt.rstrip().endswith("is paired with")
    assert f"Hidden note: {example.meta['needles'][0]['key']} is paired with {example.references[0]}." in example.prompt


def test_pairs_ask_one_token_values_after_their_keys_and_use_no_evaluation_word():
    from refine_lm.data.reserved import reserved_words
    from refine_lm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(REPO / "bases" / "delta_net")  # a real 8K vocabulary
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    filler = [document_text(i, 8) + " ".join(eval_text.NOUNS + eval_text.VALUE_WORDS) for i in range(40)]
    pairs = RetrievalEpisodeGenerator(RetrievalConfig(tasks=[0, 0, 0, 0, 0, 0, 1, 0]), 512, encode, filler)
    keys, values = pairs.pair_words()
    assert not set(keys) & set(values)
    words = {tokenizer.decode([t]).strip() for t in keys + values}
    assert not words & reserved_words()  # e.g. "apple", "river", "mango" are in the filler but never used
    for seed in range(3):
        episode = pairs.segment(np.random.default_rng(seed), 256)
        tokens = episode.tokens.tolist()
        assert len(tokens) == 256 and len(episode.answers) > 20
        first_value = {}
        for i in range(len(tokens) - 1):
            if tokens[i] in keys and tokens[i + 1] in values:
                first_value.setdefault(tokens[i], tokens[i + 1])
        for start, end in episode.answers:
            assert end == start + 1 and tokens[start - 1] in keys
            assert first_value[tokens[start - 1]] == tokens[start]  # the value the key was stated with


def test_pairs_with_digit_values_ask_the_whole_number_after_its_key():
    from refine_lm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(REPO / "bases" / "delta_net")
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    cfg = RetrievalConfig(tasks=[0, 0, 0, 0, 0, 0, 1, 0], pair_numbers=1.0)
    pairs = RetrievalEpisodeGenerator(cfg, 512, encode, [document_text(i, 8) for i in range(40)])
    keys, _ = pairs.pair_words()
    for seed in range(3):
        episode = pairs.segment(np.random.default_rng(seed), 256)
        tokens = episode.tokens.tolist()
        assert len(tokens) == 256 and len(episode.answers) >= 8
        text = tokenizer.decode(tokens)
        stated = dict(re.findall(r" ([a-z]+) (\d+),", text[: text.index("\n")]))
        for start, end in episode.answers:
            key, value = tokenizer.decode(tokens[start - 1 : start]).strip(), tokenizer.decode(tokens[start:end]).strip()
            assert tokens[start - 1] in keys and value.isdigit() and len(value) != 7  # never the NIAH value length
            assert stated[key] == value and tokenizer.decode(tokens[end : end + 1]) == ","


@pytest.mark.parametrize("pair_numbers", [0.0, 1.0])
def test_pairs_apart_ask_every_fact_at_least_a_quarter_of_the_segment_later(pair_numbers):
    from refine_lm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(REPO / "bases" / "delta_net")
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    cfg = RetrievalConfig(tasks=[0, 0, 0, 0, 0, 0, 1, 0], pair_numbers=pair_numbers, pairs_apart=True)
    pairs = RetrievalEpisodeGenerator(cfg, 1024, encode, [document_text(i, 8) for i in range(40)])
    keys, _ = pairs.pair_words()
    for seed in range(3):
        episode = pairs.segment(np.random.default_rng(seed), 1024)
        tokens = episode.tokens.tolist()
        stated_until = tokens.index(encode("\n")[0])  # the facts open the segment, then a newline
        assert len(tokens) == 1024 and tokens[0] in keys and stated_until < 1024 // 4
        assert len(episode.answers) >= 16 and min(start for start, _ in episode.answers) >= 1024 // 2
        for start, end in episode.answers:  # the value stated with the key, asked after it
            key_at = tokens.index(tokens[start - 1])
            assert key_at < stated_until and tokens[key_at + 1 : key_at + 1 + end - start] == tokens[start:end]


def test_quotes_continue_an_opening_seen_earlier_with_what_followed_it_there():
    from refine_lm.data.retrieval import QUOTE_LEADS
    from refine_lm.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(REPO / "bases" / "delta_net")
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    cfg = RetrievalConfig(tasks=[0, 0, 0, 0, 0, 0, 0, 1], noise_haystack=0.3)
    quotes = RetrievalEpisodeGenerator(cfg, 1024, encode, [document_text(i, 8) for i in range(40)])
    leads = {encode("\n" + lead)[-1]: lead for lead in QUOTE_LEADS}
    values = []
    for seed in range(12):
        for size in (256, 1024):
            episode = quotes.segment(np.random.default_rng(seed), size)
            tokens = episode.tokens.tolist()
            assert len(tokens) == size and episode.answers and min(s for s, _ in episode.answers) >= size // 2
            for start, end in episode.answers:
                line_start = max(i for i in range(start) if tokens[i] in leads or tokenizer.decode(tokens[i : i + 1]) == "\n")
                opening, rest = tokens[line_start + 1 : start], tokens[start:end]
                assert len(opening) >= 3 and rest
                seen = [i for i in range(line_start - len(opening)) if tokens[i : i + len(opening)] == opening]
                assert seen and tokens[seen[0] + len(opening) : seen[0] + len(opening) + len(rest)] == rest
                values.append(tokenizer.decode(rest).strip())
    numbers = [v for v in values if v.isdigit()]
    assert numbers and len(numbers) < len(values)  # invented facts' values and the rest of corpus sentences
    assert not [v for v in numbers if len(v) == 7]  # never the NIAH value length
