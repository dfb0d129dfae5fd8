"""Answer-scoring functions: string match (NIAH, RULER QA) and the LongBench metrics.

Every function scores one prediction against one reference (or a list, where the protocol says
"any" / "fraction"), returns a number in [0, 1], and never raises on empty strings.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from difflib import SequenceMatcher
from functools import cache
from typing import Literal

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def first_line(text: str) -> str:
    """The first line after any leading newlines (LongBench's rule for TREC, TriviaQA, SAMSum; RULER QA's)."""
    return text.lstrip("\n").split("\n", 1)[0]


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the bags of words of the two answers after SQuAD normalisation (0 when either is empty)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


@cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


RougeImplementation = Literal["rouge", "rouge-score"]


def rouge_l(prediction: str, reference: str, implementation: RougeImplementation = "rouge") -> float:
    """ROUGE-L F-measure (longest common subsequence of words).

    ``rouge`` (LongBench's scorer): the ``rouge`` package's summary-level ROUGE-L. It is case-sensitive,
    keeps punctuation on the words and splits sentences at ".", and what it refuses to score (an empty
    or all-punctuation prediction) scores 0, as LongBench catches it. ``rouge-score``: Google's package
    (lower case, punctuation dropped), the one most other tools report; it gives higher scores.
    """
    if implementation == "rouge-score":
        if not prediction.strip() or not reference.strip():
            return 0.0
        return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)
    from rouge import Rouge

    try:
        return float(Rouge().get_scores([prediction], [reference], avg=True)["rouge-l"]["f"])
    except (ValueError, RecursionError):  # empty after its tokenisation; an LCS too deep for its recursion
        return 0.0


def classification_match(prediction: str, reference: str, all_classes: Sequence[str]) -> float:
    """LongBench's TREC score: the class names that occur in the prediction are its guesses, except
    names that only occur as part of the reference (e.g. "City" inside "Other city"); the score is
    ``1 / (number of guesses)`` when the reference is among them, else 0.

    LongBench drops those names from the list it is iterating over, so the guess right after a dropped
    one is never checked (and stays); done the same way here, so that scores equal its scorer's.
    """
    guesses = [name for name in all_classes if name in prediction]
    i = 0
    while i < len(guesses):
        if guesses[i] in reference and guesses[i] != reference:
            del guesses[i]  # the next guess moves into slot i and is skipped
        i += 1
    return 1.0 / len(guesses) if reference in guesses else 0.0


def first_code_line(text: str) -> str:
    """The first line of generated code that is not a comment or a markdown fence (LongBench's code rule)."""
    for line in text.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            return line
    return ""


def code_fuzzy_ratio(prediction: str, reference: str) -> float:
    """LongBench's code similarity: fuzzywuzzy's ``ratio`` of the first code line of the prediction, in
    hundredths. fuzzywuzzy as LongBench installs it (no python-Levenshtein) is difflib's matching-blocks
    ratio, rounded to a whole percent, 1 for equal strings and 0 when one of them is empty."""
    line = first_code_line(prediction)
    if line == reference:
        return 1.0
    if not line or not reference:
        return 0.0
    return round(100 * SequenceMatcher(None, line, reference).ratio()) / 100


def contains_any(prediction: str, references: Sequence[str]) -> float:
    """1 if any reference occurs in the prediction, ignoring case (RULER QA)."""
    text = prediction.lower()
    return float(any(ref.lower() in text for ref in references if ref))


def found_each(prediction: str, values: Sequence[str]) -> list[bool]:
    """Which of ``values`` occur in the prediction, ignoring case (NIAH)."""
    text = prediction.lower()
    return [value.lower() in text for value in values]


def fraction_found(prediction: str, values: Sequence[str]) -> float:
    """Fraction of ``values`` that occur in the prediction, ignoring case (NIAH's score)."""
    found = found_each(prediction, values)
    return sum(found) / len(found) if found else 0.0


def count_match(prediction: str, reference: str) -> float:
    """LongBench's passage count score: the share of the numbers in the prediction that equal the reference."""
    numbers = re.findall(r"\d+", prediction)
    return sum(n == str(reference).strip() for n in numbers) / len(numbers) if numbers else 0.0


def passage_match(prediction: str, reference: str) -> float:
    """LongBench's passage retrieval score: the reference names ``Paragraph N``; the share of the numbers in the
    prediction that are N."""
    wanted, numbers = re.findall(r"Paragraph (\d+)", reference), re.findall(r"\d+", prediction)
    if not wanted or not numbers:
        return 0.0
    return sum(n == wanted[0] for n in numbers) / len(numbers)
