"""The evaluator: batching, the generation seam, resume from the cache, perplexity, and `refine-lm eval` end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from refine_lm.cli import main
from refine_lm.data.records import write_records
from refine_lm.eval.niah import NIAHBuilder, NIAHConfig, score_niah
from refine_lm.eval.perplexity import bucket_edges, position_stats, summarise_perplexity
from refine_lm.eval.qa import score_qa
from refine_lm.eval.runner import Evaluator, Example, ExampleCache, newline_token_ids
from refine_lm.eval.suite import EvalConfig, fingerprint
from refine_lm.eval.synthetic import filler_text

from .conftest import tiny_model


def niah_examples(tokenizer, n=5):
    cfg = NIAHConfig(depths=[0.0, 25.0, 50.0, 75.0, 100.0], max_new_tokens=6)
    lengths = [300, 420]
    return [e for length in lengths for e in NIAHBuilder("single", cfg, tokenizer, seed=0).examples(length)][:n]


def test_batched_generation_equals_one_prompt_at_a_time(eval_tokenizer):
    model = tiny_model("delta_net")
    examples = niah_examples(eval_tokenizer, n=6)
    alone = Evaluator(model, eval_tokenizer, batch_size=1, progress=False).run(examples, score_niah)
    batched = Evaluator(model, eval_tokenizer, batch_size=4, progress=False).run(examples, score_niah)
    assert [r["output"] for r in batched] == [r["output"] for r in alone]
    assert [r["id"] for r in batched] == [e.id for e in examples]  # input order, whatever the batching
    assert all(r["generated_tokens"] == 6 for r in alone)  # a random model never says EOS


def test_interrupted_evaluation_resumes_with_the_same_results(tmp_path, eval_tokenizer):
    model = tiny_model("gated_deltanet")
    examples = niah_examples(eval_tokenizer, n=5)
    reference = Evaluator(model, eval_tokenizer, batch_size=2, progress=False).run(examples, score_niah)

    class Interrupted(Evaluator):
        calls = 0

        def generate(self, prompts, max_new_tokens, stop_at_newline):
            Interrupted.calls += 1
            if Interrupted.calls == 2:
                raise KeyboardInterrupt
            return super().generate(prompts, max_new_tokens, stop_at_newline)

    path = tmp_path / "cache.jsonl"
    with pytest.raises(KeyboardInterrupt):
        Interrupted(model, eval_tokenizer, batch_size=2, progress=False).run(examples, score_niah, ExampleCache(path, "fp"))
    assert len(path.read_text().splitlines()) == 2  # the first batch was saved
    with path.open("a") as f:
        f.write('{"key": "cut short by the interrupt')  # a half-written line is ignored

    resumed = Evaluator(model, eval_tokenizer, batch_size=2, progress=False)
    records = resumed.run(examples, score_niah, ExampleCache(path, "fp"))
    assert [r["output"] for r in records] == [r["output"] for r in reference]
    assert [r["score"] for r in records] == [r["score"] for r in reference]
    assert resumed.throughput.examples == 3 and resumed.throughput.cached_examples == 2  # only 3 were generated
    assert resumed.throughput.generated_tokens == 5 * 6  # the 2 from the cache count with their recorded figures

    again = Evaluator(model, eval_tokenizer, batch_size=2, progress=False)
    again.run(examples, score_niah, ExampleCache(path, "fp"))
    assert again.throughput.examples == 0 and again.throughput.cached_examples == 5
    kept = again.throughput.as_dict()
    assert kept["generated_tokens"] == 5 * 6 and kept["decode_seconds"] > 0 and kept["generated_tokens_per_s"] > 0
    other = Evaluator(model, eval_tokenizer, batch_size=2, progress=False)
    other.run(examples, score_niah, ExampleCache(path, "another model"))
    assert other.throughput.examples == 5  # a different fingerprint never reuses answers


def test_generation_seam_and_first_line_rule(eval_tokenizer):
    """A subclass replacing generate() (as test-time training will) gets prompts as ids; answers are cut at a newline."""
    seen = []

    class Scripted(Evaluator):
        def generate(self, prompts, max_new_tokens, stop_at_newline):
            seen.append((len(prompts), max_new_tokens, stop_at_newline))
            return [eval_tokenizer("\nParis\nLondon")["input_ids"] for _ in prompts]

    examples = [Example(str(i), "qa", f"Question {i}? Answer:", ["paris"], 9, first_line=True) for i in range(3)]
    records = Scripted(tiny_model("delta_net"), eval_tokenizer, batch_size=2, progress=False).run(examples, score_qa)
    assert seen == [(2, 9, True), (1, 9, True)]
    assert [r["prediction"] for r in records] == ["Paris"] * 3 and [r["score"] for r in records] == [1.0] * 3
    newline = set(newline_token_ids(eval_tokenizer))
    assert eval_tokenizer("\n")["input_ids"][0] in newline
    assert all("\n" in eval_tokenizer.decode([i]) for i in newline)


def test_stop_at_newline_lets_the_first_token_through(eval_tokenizer):
    """With every token a stop token, a first-line task still gets its first token, then stops."""
    model = tiny_model("delta_net")
    evaluator = Evaluator(model, eval_tokenizer, progress=False)
    prompts = [eval_tokenizer("one two three")["input_ids"], eval_tokenizer("four")["input_ids"]]
    free = evaluator.generate(prompts, 5, stop_at_newline=False)
    evaluator.newline_ids = list(range(model.config.vocab_size))
    stopped = evaluator.generate(prompts, 5, stop_at_newline=True)
    assert [len(s) for s in stopped] == [2, 2]
    assert [s[:2] for s in stopped] == [f[:2] for f in free]


def test_perplexity_statistics_match_full_logits(eval_tokenizer):
    model = tiny_model("delta_net")
    model.logits_slice_len = 7  # several slices
    docs = [eval_tokenizer(filler_text(8, seed=s))["input_ids"][:n] for s, n in ((0, 90), (1, 60))]
    edges = bucket_edges(90, [16, 64])
    assert edges == [16, 64, 90]
    stats = position_stats(model, docs, edges, doc_seeds=[1, 2], slice_len=7)
    for doc, buckets in zip(docs, stats):
        ids = torch.tensor([doc])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].double()
        logp = logits.log_softmax(-1)
        targets = ids[0, 1:]
        nll = -logp.gather(-1, targets[:, None])[:, 0]
        hits = (logits.argmax(-1) == targets).double()
        positions = torch.arange(1, len(doc))
        for (lo, hi), bucket in zip(zip([0, *edges[:-1]], edges), buckets):
            inside = (positions >= lo) & (positions < hi)
            assert bucket["tokens"] == inside.sum()
            assert bucket["nll"] == pytest.approx(float(nll[inside].sum()), rel=1e-9)
            assert bucket["argmax_correct"] == float(hits[inside].sum())
            assert 0 <= bucket["sampled_correct"] <= bucket["tokens"]
    assert stats == position_stats(model, docs, edges, doc_seeds=[1, 2], slice_len=7)  # seeded sampling
    summary = summarise_perplexity([{"buckets": b} for b in stats], edges)
    total_nll = sum(b["nll"] for s in stats for b in s)
    assert summary["overall"]["tokens"] == 89 + 59
    assert summary["overall"]["perplexity"] == pytest.approx(math.exp(total_nll / 148))


def test_refine_lm_eval_end_to_end(tmp_path, tiny_model_dir, capsys):
    qa = write_records(
        [
            {
                "prompt": "Doc: the sky is blue.\nQuestion: what colour? Answer:",
                "answer": ["blue"],
                "max_seq_length": 64,
                "task": "qa_1",
            }
        ],
        tmp_path / "qa.parquet",
    )
    lb = tmp_path / "longbench"
    rows = [{"input": f"Question: what is {i}?", "context": "Question: x?\nType: city\n" * 40, "answers": ["city"],
             "all_classes": ["city", "country"], "length": 80, "dataset": "trec", "_id": str(i)} for i in range(2)]  # fmt: skip
    write_records(rows, lb / "trec.jsonl")
    (tmp_path / "docs.txt").write_text(filler_text(40, seed=3))
    out = tmp_path / "out"
    args = [
        "eval", "--model", str(tiny_model_dir),
        "--tasks", "niah_single,niah_multivalue,synthetic_qa,ruler_qa,longbench/trec,perplexity",
        "--lengths", "400,600", "--limit", "2", "--batch-size", "2", "--max-length", "200", "--output-dir", str(out),
        "--niah.max-new-tokens", "4", "--qa-path", str(qa), "--longbench-path", str(lb),
        "--perplexity.path", str(tmp_path / "docs.txt"),
        "--perplexity.buckets", "64,128", "--synthetic-qa-per-length", "1", "--qa-max-new-tokens", "4", "--progress", "false",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| niah_single | 4 |" in printed and "| trec | 2 | 2 |" in printed and "perplexity" in printed
    report = json.loads((out / "results.json").read_text())
    results = report["results"]
    assert set(results) == {
        "niah_single",
        "niah_multivalue",
        "synthetic_qa",
        "ruler_qa",
        "longbench/trec",
        "longbench",
        "perplexity",
    }
    assert results["niah_single"]["examples"] == 4 and set(results["niah_single"]["by_length"]) == {"400", "600"}
    assert results["longbench/trec"]["truncated"] == 2  # 40 few-shot lines > max_length 200: middle cut
    assert results["synthetic_qa"]["truncated"] == 2  # built to 400 / 600 tokens, max_length 200
    assert [b["to"] for b in results["perplexity"]["buckets"]] == [64, 128, 600]
    assert report["throughput"]["prefill_tokens_per_s"] > 0 and report["throughput"]["generated_tokens"] > 0
    for name in ("results.md", "niah_single.png", "niah_multivalue.png", "perplexity.png", "cache/longbench__trec.jsonl"):
        assert (out / name).is_file(), name
    cached = [json.loads(line) for line in (out / "cache" / "niah_single.jsonl").read_text().splitlines()]
    assert len(cached) == 4 and all(r["prompt_tokens"] <= 600 for r in cached)
    assert main(args) == 0  # everything cached: the same results again, nothing generated
    again = json.loads((out / "results.json").read_text())
    assert again["results"] == results
    assert again["throughput"]["examples"] == 0 and again["throughput"]["cached_examples"] == report["throughput"]["examples"] > 0
    for figure in ("prompt_tokens", "generated_tokens", "prefill_tokens_per_s", "generated_tokens_per_s"):
        assert again["throughput"][figure] == pytest.approx(report["throughput"][figure], rel=1e-6), figure


def test_cache_fingerprint_follows_the_content_of_config_weights_and_tokenizer(tmp_path, tiny_model_dir):
    import json as json_module
    import os
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    cfg = EvalConfig(model=str(model_dir))
    before = fingerprint(cfg)
    weights = model_dir / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert fingerprint(cfg) == before  # touched, not changed: the cache stays valid
    config = json_module.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json_module.dumps({**config, "norm_eps": 1e-5}))
    assert fingerprint(cfg) != before  # a config.json edit changes outputs
    changed_config = fingerprint(cfg)
    tokenizer = model_dir / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"<|pad|>"', '"<|padding|>"'))
    assert fingerprint(cfg) != changed_config
    changed_tokenizer = fingerprint(cfg)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert fingerprint(cfg) != changed_tokenizer
    assert fingerprint(EvalConfig(model=str(model_dir), max_length=100)) != fingerprint(cfg)


def test_refine_lm_eval_bad_input(tmp_path, tiny_model_dir, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--tasks", "niah,needle"]) == 2
    assert "unknown task 'needle'" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_model_dir), "--tasks", "ruler_qa"]) == 2
    assert "task ruler_qa needs qa_path" in capsys.readouterr().err
    bad = write_records([{"prompt": "p", "answers": ["a"]}], tmp_path / "qa.jsonl")
    args = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--tasks",
        "ruler_qa",
        "--qa-path",
        str(bad),
        "--output-dir",
        str(tmp_path / "o"),
    ]
    assert main(args) == 2
    assert "qa.jsonl: row 1 has no column 'answer'" in capsys.readouterr().err
    assert main(["eval", "--model", "random:delta_net:tiny"]) == 2
    assert "needs tokenizer=DIR" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path)]) == 2
    assert "no tokenizer" in capsys.readouterr().err
