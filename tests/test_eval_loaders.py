"""Loading RULER QA and LongBench files in both formats, made-up QA prompts, and bad input."""

from __future__ import annotations

import json

import pytest

from refine_lm.config import ConfigError
from refine_lm.data.records import read_records, read_texts, write_records
from refine_lm.eval.longbench import TASKS, TREC_CLASSES, load_longbench, score_longbench
from refine_lm.eval.qa import load_qa_examples, score_qa, synthetic_qa_rows
from refine_lm.eval.runner import Evaluator, Example, truncate_middle
from refine_lm.models.registry import build_model

QA_ROWS = [
    {
        "prompt": "Paris is in France.\nQuestion: Where?\nAnswer:",
        "answer": ["France", "FR"],
        "max_seq_length": 4096,
        "task": "qa_1",
    },
    {"prompt": "A|B is a band.\nQuestion: Which band?\nAnswer:", "answer": ["A|B"], "max_seq_length": 8192, "task": "qa_2"},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_qa_files_load_in_both_formats(tmp_path, suffix):
    path = write_records(QA_ROWS, tmp_path / f"qa{suffix}")
    examples = load_qa_examples(path, max_new_tokens=7)
    assert [e.references for e in examples] == [["France", "FR"], ["A|B"]]  # never split on "|"
    assert [e.meta for e in examples] == [{"subtask": "qa_1", "length": 4096}, {"subtask": "qa_2", "length": 8192}]
    assert all(e.first_line and e.truncate and e.max_new_tokens == 7 for e in examples)
    assert score_qa(examples[0], "it is in france") == {"score": 1.0}
    assert score_qa(examples[1], "A") == {"score": 0.0}
    assert len(load_qa_examples(tmp_path)) == 2  # a directory of files


def test_qa_bad_input_names_file_and_column(tmp_path):
    path = write_records([{"prompt": "x", "answers": ["y"]}], tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match=r"bad.jsonl: row 1 has no column 'answer'"):
        load_qa_examples(path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match=r"empty.jsonl: the file has no rows"):
        load_qa_examples(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "answer": ["b"]}\n{"prompt": \n')
    with pytest.raises(ConfigError, match=r"broken.jsonl:2: invalid JSON"):
        read_records(broken)
    wrong = write_records([{"prompt": "a", "answer": [1, 2]}], tmp_path / "wrong.parquet")
    with pytest.raises(ConfigError, match=r"wrong.parquet: row 1, column 'answer'"):
        load_qa_examples(wrong)
    with pytest.raises(FileNotFoundError, match=r"missing.jsonl"):
        load_qa_examples(tmp_path / "missing.jsonl")


def test_qa_limit_applies_to_each_file_of_a_directory(tmp_path):
    write_records(QA_ROWS, tmp_path / "a.jsonl")
    write_records(QA_ROWS, tmp_path / "b.jsonl")
    examples = load_qa_examples(tmp_path, limit=1)
    assert [e.id.split("/")[0] for e in examples] == ["a.jsonl", "b.jsonl"]


def test_synthetic_qa_rows_fit_their_length_and_contain_the_answer(eval_tokenizer):
    rows = synthetic_qa_rows(eval_tokenizer, [600, 1500], per_length=3, seed=1)
    assert rows == synthetic_qa_rows(eval_tokenizer, [600, 1500], per_length=3, seed=1)
    assert rows != synthetic_qa_rows(eval_tokenizer, [600, 1500], per_length=3, seed=2)
    for row in rows:
        n = len(eval_tokenizer(row["prompt"])["input_ids"])
        assert row["max_seq_length"] - 150 <= n <= row["max_seq_length"]  # at most one document (~110 tokens) short
        assert row["answer"][0] in row["prompt"] and row["prompt"].endswith("Answer:")
        assert set(row) >= {"prompt", "answer", "max_seq_length", "task"}


def original_rows(dataset: str, n: int = 2) -> list[dict]:
    return [
        {
            "input": f"question {i} of {dataset}?",
            "context": f"context {i} " * 5,
            "answers": ["other city"] if dataset == "trec" else [f"answer {i}"],
            "all_classes": ["city", "other city"] if dataset == "trec" else None,
            "length": 10,
            "dataset": dataset,
            "_id": f"{dataset}-{i}",
        }
        for i in range(n)
    ]


def test_longbench_original_format_with_our_and_official_templates(tmp_path):
    for dataset in ("hotpotqa", "trec", "lcc"):
        write_records(original_rows(dataset), tmp_path / f"{dataset}.jsonl")
    write_records(original_rows("musique"), tmp_path / "musique.jsonl")  # another LongBench task: skipped
    examples = load_longbench(tmp_path, ["hotpotqa", "trec"])
    assert [e.task for e in examples] == ["longbench/hotpotqa"] * 2 + ["longbench/trec"] * 2
    hotpot = examples[0]
    assert hotpot.prompt == TASKS["hotpotqa"].template.format(context="context 0 " * 5, input="question 0 of hotpotqa?")
    assert (hotpot.max_new_tokens, hotpot.first_line, hotpot.id) == (32, False, "hotpotqa-0")
    trec = examples[2]
    assert (trec.max_new_tokens, trec.first_line, trec.meta["all_classes"]) == (64, True, ["city", "other city"])
    assert score_longbench(trec, "other city") == {"score": 1.0}
    assert score_longbench(hotpot, "The answer 0.") == {"score": 1.0}

    official = tmp_path / "prompts.json"
    official.write_text(json.dumps({"hotpotqa": "C={context} Q={input} A:", "unused_task": "x"}))
    (hotpot, *_) = load_longbench(tmp_path, ["hotpotqa"], official)
    assert hotpot.prompt == "C=" + "context 0 " * 5 + " Q=question 0 of hotpotqa? A:"


def test_longbench_prebuilt_parquet(tmp_path):
    rows = [
        {"prompt": "P1", "answers": ["a b"], "max_gen_tokens": 5, "task": "qasper"},
        {"prompt": "P2", "answers": ["def f():"], "max_gen_tokens": 64, "task": "repobench-p"},
        {"prompt": "P3", "answers": ["x"], "max_gen_tokens": 16, "task": "gov_report"},
    ]
    path = write_records(rows, tmp_path / "longbench_prompts.parquet")
    examples = load_longbench(path, ["qasper", "repobench-p"])
    assert [(e.task, e.prompt, e.max_new_tokens) for e in examples] == [
        ("longbench/qasper", "P1", 5),
        ("longbench/repobench-p", "P2", 64),
    ]
    assert score_longbench(examples[1], "# comment\ndef f():")["score"] == 1.0
    assert score_longbench(examples[0], "b a")["score"] == 1.0


def test_longbench_zero_generation_length_is_an_error(tmp_path):
    path = write_records([{"prompt": "P", "answers": ["a"], "max_gen_tokens": 0, "task": "qasper"}], tmp_path / "lb.parquet")
    with pytest.raises(ConfigError, match=r"lb\.parquet: row 1, column 'max_gen_tokens': expected a positive integer"):
        load_longbench(path, ["qasper"])


def test_longbench_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="unknown LongBench task 'hotpot'"):
        load_longbench(tmp_path, ["hotpot"])
    write_records(original_rows("hotpotqa"), tmp_path / "hotpotqa.jsonl")
    with pytest.raises(ConfigError, match="no rows for LongBench task 'samsum'"):
        load_longbench(tmp_path / "hotpotqa.jsonl", ["hotpotqa", "samsum"])
    rows = original_rows("trec")
    rows[1]["all_classes"] = []  # as the pre-built release files have none: LongBench's fixed TREC classes
    write_records(rows, tmp_path / "trec.jsonl")
    assert load_longbench(tmp_path, ["trec"])[1].meta["all_classes"] == list(TREC_CLASSES)
    no_context = [{k: v for k, v in r.items() if k != "context"} for r in original_rows("lcc")]
    write_records(no_context, tmp_path / "lcc.jsonl")
    with pytest.raises(ConfigError, match=r"lcc.jsonl: row 1 has no column 'context'"):
        load_longbench(tmp_path, ["lcc"])
    bad_template = tmp_path / "t.json"
    bad_template.write_text(json.dumps({"hotpotqa": "{context} {question}"}))
    with pytest.raises(ConfigError, match="unknown placeholder 'question'"):
        load_longbench(tmp_path, ["hotpotqa"], bad_template)


def test_read_texts(tmp_path):
    (tmp_path / "a.txt").write_text("first document")
    write_records([{"text": "second"}, {"text": "third"}], tmp_path / "b.jsonl")
    assert read_texts(tmp_path) == ["first document", "second", "third"]
    write_records([{"body": "x"}], tmp_path / "c.jsonl")
    with pytest.raises(ConfigError, match=r"c.jsonl: row 1 has no column 'text'"):
        read_texts(tmp_path / "c.jsonl")


def test_truncation_cuts_the_middle_never_the_end(eval_tokenizer):
    assert truncate_middle(list(range(10)), 4) == [0, 1, 8, 9]
    assert truncate_middle(list(range(10)), 5) == [0, 1, 7, 8, 9]
    assert truncate_middle([1, 2], 5) == [1, 2]
    model = build_model("delta_net", "tiny", seed=0).eval()
    evaluator = Evaluator(model, eval_tokenizer, max_length=64, progress=False)
    prompt = "Instructions first. " + "filler words here " * 200 + "Question: where? Answer:"
    ids, cut = evaluator.encode(Example("0", "t", prompt, ["x"], 4, truncate=True))
    full = eval_tokenizer(prompt)["input_ids"]
    assert cut and len(ids) == 64 and ids[:32] == full[:32] and ids[32:] == full[-32:]
    assert eval_tokenizer.decode(ids).endswith("Question: where? Answer:")
    ids, cut = evaluator.encode(Example("0", "t", prompt, ["x"], 4, truncate=False))
    assert not cut and ids == full  # generated tasks are read whole


def test_all_sixteen_english_tasks_and_the_release_file_names(tmp_path):
    assert len(TASKS) == 16 and {"musique", "gov_report", "passage_count", "passage_retrieval_en"} <= set(TASKS)
    for task, answer in (("passage_count", "2"), ("musique", "x y")):
        row = {"prompt": "P", "answers": [answer], "max_gen_tokens": 32, "task": task}
        write_records([row], tmp_path / f"{task}_16384.parquet")
    examples = load_longbench(tmp_path, ["passage_count", "musique"])
    assert sorted(e.task for e in examples) == ["longbench/musique", "longbench/passage_count"]
    count = next(e for e in examples if e.task == "longbench/passage_count")
    assert score_longbench(count, "2")["score"] == 1.0 and score_longbench(count, "2 or 3")["score"] == 0.5
    assert score_longbench(count, "none")["score"] == 0.0


def test_passage_scores_follow_longbench():
    from refine_lm.eval.metrics import count_match, passage_match

    assert passage_match("Paragraph 3", "Paragraph 3") == 1.0
    assert passage_match("It is paragraph 3, not 12", "Paragraph 3") == 0.5
    assert passage_match("no number", "Paragraph 3") == 0.0
    assert count_match("There are 7 unique paragraphs among 9", "7") == 0.5
