"""Scoring functions on hand-computed cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refine_lm.eval.longbench import TASKS, TREC_CLASSES, longbench_metric
from refine_lm.eval.metrics import (
    classification_match,
    code_fuzzy_ratio,
    contains_any,
    first_code_line,
    first_line,
    fraction_found,
    normalize_answer,
    rouge_l,
    token_f1,
)


def test_squad_normalisation():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("An apple; a pear.") == "apple pear"
    assert normalize_answer("theory") == "theory"  # articles only as whole words
    assert normalize_answer("...") == ""


def test_token_f1_by_hand():
    # prediction -> [cat, sat, on, mat], reference -> [cat, on, mat]: 3 shared, P = 3/4, R = 1
    assert token_f1("The cat sat on a mat.", "cat on the mat") == pytest.approx(2 * 0.75 / 1.75)
    assert token_f1("Paris", "paris!") == 1.0
    assert token_f1("", "paris") == 0.0
    assert token_f1("the", "a") == 0.0  # both normalise to nothing
    # a repeated word counts as often as it occurs in both: [x, y, y] vs [y]: 1 shared, P = 1/3, R = 1
    assert token_f1("x y y", "y") == pytest.approx(2 * (1 / 3) / (4 / 3))


def test_rouge_l_by_hand():
    # LCS of 5 words; P = 5/5, R = 5/6 (rouge-score). The rouge package counts distinct words (its n-gram sets):
    # 4 in the prediction, 5 in the reference, 4 of them in the LCS: P = 1, R = 4/5, F = 8/9
    assert rouge_l("the cat on the mat", "the cat sat on the mat", "rouge-score") == pytest.approx(2 * (5 / 6) / (1 + 5 / 6))
    assert rouge_l("the cat on the mat", "the cat sat on the mat") == pytest.approx(8 / 9)
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("Same Words", "same words") == 0.0  # LongBench's ROUGE (the rouge package) is case-sensitive
    assert rouge_l("Same Words", "same words", "rouge-score") == pytest.approx(1.0)  # Google's lower-cases


LONGBENCH_SCORES = json.loads((Path(__file__).parent / "fixtures" / "longbench_scores.json").read_text())


@pytest.mark.parametrize("metric", ["qa_f1", "rouge_l", "classification", "code", "count", "retrieval"])
def test_scores_equal_longbench_scorer(metric):
    """Made-up prediction / reference pairs (punctuation, case, articles, several lines, empty output, comments in
    code, very long lines) scored by LongBench's own metrics.py: tests/fixtures/make_longbench_scores.py says how."""
    dataset = {"qa_f1": "hotpotqa", "rouge_l": "gov_report", "classification": "trec", "code": "lcc"}.get(
        metric, {"count": "passage_count", "retrieval": "passage_retrieval_en"}.get(metric)
    )
    assert TASKS[dataset].metric == metric
    pairs = LONGBENCH_SCORES[metric]
    assert len(pairs) >= 40
    for prediction, reference, expected in pairs:
        answer = first_line(prediction) if TASKS[dataset].first_line else prediction
        got = longbench_metric(dataset, answer, reference, LONGBENCH_SCORES["trec_classes"])
        assert got == pytest.approx(expected, abs=1e-9), (prediction, reference)


def test_fixed_trec_classes_are_longbench_s():
    assert list(TREC_CLASSES) == LONGBENCH_SCORES["trec_classes"]


def test_trec_classification_match():
    classes = ["city", "other city", "country"]
    # LongBench removes "city" while iterating, so "other" (right after it) is never checked and stays a guess
    assert classification_match("city, other, other city", "other city", ["city", "other", "other city"]) == 0.5
    assert classification_match("Type: other city", "other city", classes) == 1.0  # "city" lies inside the reference
    assert classification_match("city or country", "country", classes) == 0.5
    assert classification_match("city", "other city", classes) == 0.0
    assert classification_match("no idea", "city", classes) == 0.0


def test_code_first_line_and_fuzzy_ratio():
    assert first_code_line("\n# a comment\n// another\n```python\n    return x + 1\nmore") == "    return x + 1"
    assert code_fuzzy_ratio("# note\n    return x + 1\n", "    return x + 1") == 1.0
    assert code_fuzzy_ratio("abcd", "abce") == pytest.approx(0.75)  # Indel distance 2 over 8 characters
    assert code_fuzzy_ratio("# only comments", "x = 1") == 0.0


def test_first_line_rules():
    assert first_line("\n\nParis\nLondon") == "Paris"
    assert first_line(" Paris") == " Paris"
    assert first_line("") == ""


def test_string_match_scores():
    assert contains_any("The answer is PARIS.", ["London", "paris"]) == 1.0
    assert contains_any("London", ["paris"]) == 0.0
    assert fraction_found("values: 1234567 and ABC-def", ["1234567", "abc-DEF", "7654321", "9999999"]) == 0.5
