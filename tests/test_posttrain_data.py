"""Generated long-context QA (data/qa.py): facts in corpus text, questions about them, held-out splits, files."""

from __future__ import annotations

import re

import pytest

from refine_lm.cli import main
from refine_lm.config import ConfigError
from refine_lm.data import PreparedCorpus
from refine_lm.data.qa import FACT_KINDS, FactQAConfig, FactQAGenerator
from refine_lm.eval.qa import load_qa_examples

CFG = FactQAConfig(lengths=[224, 320], facts=3)


def statements_of(kind: str, prompt: str) -> list[tuple[str, str]]:
    """(key, value) of every fact of ``kind`` stated in ``prompt``."""
    key = r"([A-Z][a-z]+(?: [A-Z][a-z]+)?)"  # a person (two capitalised words), a town or a house
    pattern = re.escape(FACT_KINDS[kind].statement).replace(r"\{key\}", key).replace(r"\{value\}", r"(\w+)")
    return re.findall(pattern, prompt)


def test_rows_state_the_facts_and_ask_about_one_of_them(tiny_corpus):
    generator = FactQAGenerator(tiny_corpus, "train", CFG)
    tokenizer = generator.tokenizer
    for row in generator.rows(12, seed=3):
        kind = row["task"].removeprefix("fact_qa/")
        facts = statements_of(kind, row["prompt"])
        assert len(facts) == 3 and len({k for k, _ in facts}) == 3  # distractors differ in the key
        question = row["prompt"].rsplit("Question: ", 1)[1]
        assert question.endswith("\nAnswer:")
        asked = [value for key, value in facts if FACT_KINDS[kind].question.format(key=key) in question]
        assert asked == row["answer"]
        tokens = len(tokenizer(row["prompt"])["input_ids"])
        assert 0.6 * row["max_seq_length"] <= tokens <= row["max_seq_length"] in CFG.lengths


def test_rows_are_a_function_of_the_seed(tiny_corpus):
    a = FactQAGenerator(tiny_corpus, "train", CFG)
    b = FactQAGenerator(tiny_corpus, "train", CFG)
    assert a.row((1, 2, 3)) == b.row((1, 2, 3))
    assert a.row((1, 2, 3))["prompt"] != a.row((1, 2, 4))["prompt"]


def test_texts_come_from_the_requested_split_only(tiny_corpus):
    corpus = PreparedCorpus(tiny_corpus)
    tokenizer = corpus.tokenizer()
    texts = {
        split: [tokenizer.decode(d.tokens.tolist()) for d in corpus.documents(split, exclude_sources=["synthetic"])]
        for split in ("train", "test")
    }
    for row in FactQAGenerator(corpus, "test", CFG).rows(4, seed=0):
        body = row["prompt"].split("\n\n", 1)[1].rsplit("\n\nQuestion:", 1)[0]
        pieces = [p for p in re.split(r"[^\n]*(?:pier|vault|watchword|born in)[^\n.]*\.", body) if len(p.strip()) > 40]
        assert pieces
        for piece in pieces:
            line = max(piece.strip().split("\n"), key=len)[:40]
            assert any(line in t for t in texts["test"]) and not any(line in t for t in texts["train"])


def test_value_pool_limits_the_answers(tiny_corpus):
    cfg = FactQAConfig(lengths=[224], facts=2, value_pool=2, kinds=["vault"])
    generator = FactQAGenerator(tiny_corpus, "validation", cfg)
    pool = generator.value_pool("vault")
    assert len(set(pool)) == 2
    rows = generator.rows(10)
    assert {r["answer"][0] for r in rows} <= set(pool)
    assert all(sorted(v for _, v in statements_of("vault", r["prompt"])) == sorted(pool) for r in rows)
    with pytest.raises(ValueError, match="value_pool"):
        FactQAConfig(facts=3, value_pool=2)


def test_too_short_a_length_is_refused_with_the_numbers(tiny_corpus):
    with pytest.raises(ConfigError, match="too short"):
        FactQAGenerator(tiny_corpus, "train", FactQAConfig(lengths=[40], facts=4)).row((0,))


def test_data_qa_writes_a_ruler_qa_file(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "qa.jsonl"
    args = ["data", "qa", f"corpus={tiny_corpus}", "split=validation", "examples=5", "qa.lengths=[256]", f"output={out}"]
    assert main(args) == 0
    examples = load_qa_examples(out)
    assert len(examples) == 5 and all(e.references and e.prompt.endswith("Answer:") for e in examples)
    assert {e.meta["length"] for e in examples} == {256}
    assert "wrote 5 QA rows from the validation split" in capsys.readouterr().out
