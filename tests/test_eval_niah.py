"""NIAH invariants: needles exactly where intended, token length, seeding, variants, scoring."""

from __future__ import annotations

import pytest

from refine_lm.config import ConfigError
from refine_lm.eval.niah import VARIANTS, WORDINGS, NIAHBuilder, NIAHConfig, heatmap_grid, score_niah, split_sentences
from refine_lm.eval.synthetic import filler_text

DEPTHS = [0.0, 25.0, 50.0, 75.0, 100.0]


def context_of(example) -> str:
    return example.prompt.split("\n\n")[1]


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("haystack", ["noise", "corpus", "needles"])
def test_needles_sit_at_their_depths_and_prompts_fit_the_length(eval_tokenizer, variant, haystack):
    cfg = NIAHConfig(haystack=haystack, corpus_path="unused" if haystack == "corpus" else None, depths=DEPTHS)
    corpus = split_sentences(filler_text(300, seed=5))
    builder = NIAHBuilder(variant, cfg, eval_tokenizer, seed=3, corpus=corpus)
    length = 1024
    for example in builder.examples(length):
        tokens = n_tokens(eval_tokenizer, example.prompt)
        assert length - 40 <= tokens <= length  # at most one haystack sentence short
        context = context_of(example)
        meta = example.meta
        sentences = meta["haystack_sentences"]
        needles = meta["needles"]
        for needle in needles:
            text = WORDINGS["ruler"].needle.format(type="numbers", key=needle["key"], value=needle["value"])
            assert example.prompt.count(text) == 1
            assert context[needle["char_start"] :].startswith(text)
            before = [s for s in split_sentences(context[: needle["char_start"]]) if not s.startswith("One of the special")]
            if haystack == "needles":  # the haystack itself is needles: count everything that is not one of ours
                ours = {WORDINGS["ruler"].needle.format(type="numbers", key=n["key"], value=n["value"]) for n in needles}
                before = [s for s in split_sentences(context[: needle["char_start"]]) if s not in ours]
            assert len(before) == round(needle["depth"] / 100 * sentences)
        asked = [n for n in needles if n["asked"]]
        assert example.references == [n["value"] for n in asked]
        assert meta["value_depths"] == [n["depth"] for n in asked]
        assert asked[0]["depth"] == meta["depth"]
        assert len({n["value"] for n in needles}) == len(needles)
        expected_asked = {"single": 1, "multikey": 1, "multiquery": cfg.num_queries, "multivalue": cfg.num_values}[variant]
        assert len(asked) == expected_asked
        assert len({n["key"] for n in asked}) == (1 if variant == "multivalue" else expected_asked)
        if variant == "multikey":
            assert len(needles) == 1 + cfg.num_distractors
            assert asked[0]["key"] not in {n["key"] for n in needles if not n["asked"]}
        for key in {n["key"] for n in asked}:
            assert key in example.prompt.split("\n\n")[-1]  # asked in the question
        if haystack == "needles":
            assert all(s.startswith("One of the special magic numbers for") for s in split_sentences(context))
            assert context.count(f"for {asked[0]['key']} is") == sum(n["key"] == asked[0]["key"] for n in asked)


def test_lengths_are_met_for_several_sizes_and_uuid_values(eval_tokenizer):
    cfg = NIAHConfig(keys="uuids", values="uuids", depths=[50.0])
    builder = NIAHBuilder("multivalue", cfg, eval_tokenizer, seed=0)
    for length in (700, 2000, 5000):
        (example,) = builder.examples(length)
        assert length - 40 <= n_tokens(eval_tokenizer, example.prompt) <= length
        assert "special magic uuids" in example.prompt and len(example.references[0]) == 36


def test_same_seed_same_prompts_other_seed_other_prompts(eval_tokenizer):
    cfg = NIAHConfig(depths=DEPTHS)
    make = lambda seed: [e.prompt for e in NIAHBuilder("multikey", cfg, eval_tokenizer, seed=seed).examples(600)]
    assert make(1) == make(1)
    assert all(a != b for a, b in zip(make(1), make(2)))
    prompts = make(1)
    assert len(set(prompts)) == len(prompts)  # different depths and samples differ too


def test_limit_picks_depths_evenly(eval_tokenizer):
    cfg = NIAHConfig(depths=[0.0, 20.0, 40.0, 60.0, 80.0, 100.0], samples_per_depth=2)
    examples = NIAHBuilder("single", cfg, eval_tokenizer).examples(400, limit=3)
    assert [e.meta["depth"] for e in examples] == [0.0, 80.0, 40.0]
    assert len(NIAHBuilder("single", cfg, eval_tokenizer).examples(400)) == 12


def test_too_short_length_and_bad_settings_are_refused(eval_tokenizer):
    with pytest.raises(ConfigError, match="length 50 is too short"):
        NIAHBuilder("single", NIAHConfig(), eval_tokenizer).examples(50)
    with pytest.raises(ValueError, match="depths"):
        NIAHConfig(depths=[120.0])
    with pytest.raises(ValueError, match="corpus_path"):
        NIAHConfig(haystack="corpus")
    with pytest.raises(ValueError, match="unknown NIAH variant"):
        NIAHBuilder("double", NIAHConfig(), eval_tokenizer)


def test_score_and_heatmap(eval_tokenizer):
    (example,) = NIAHBuilder("multiquery", NIAHConfig(depths=[0.0, 50.0], num_queries=2), eval_tokenizer).examples(500, limit=1)
    first, _ = example.references
    record = {"meta": example.meta, **score_niah(example, f" {first.upper()} and 42")}
    assert record["score"] == 0.5 and record["found"] == [True, False]
    assert example.meta["value_depths"] == [0.0, 50.0]
    assert heatmap_grid([record], [500, 1000], [0.0, 50.0]) == [[1.0, 0.0], [None, None]]
