"""``refine-lm study``: grid expansion, statistics on hand-made numbers, report rendering, and a tiny study
that is interrupted, resumed without redoing finished cells, and re-rendered from what is stored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from refine_lm.cli import main
from refine_lm.config import ConfigError, from_dict
from refine_lm.demo import study_comparison
from refine_lm.models.registry import build_model
from refine_lm.study import StudyConfig, bootstrap_interval, expand_grid, paired_difference, summarize
from refine_lm.study import runner as study_runner
from refine_lm.study.report import write_report
from refine_lm.study.stats import Summary


@pytest.fixture(scope="module")
def tiny_study_base(tiny_corpus, tmp_path_factory):
    """A random tiny DeltaNet with the tiny corpus's tokenizer: enough to train and evaluate in seconds."""
    from refine_lm.data import PreparedCorpus

    tokenizer = PreparedCorpus(tiny_corpus).tokenizer()
    path = tmp_path_factory.mktemp("study-base")
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    build_model("delta_net", "tiny", seed=0, vocab_size=len(tokenizer), **special).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def study_dict(base, corpus, out, **extra) -> dict:
    data = {
        "base": str(base),
        "train": {
            "data": {"corpus": str(corpus), "seq_len": 128, "validation_sequences": 2, "recall_sequences": 2},
            "optim": {"lr": 1e-3, "schedule": "constant"},
            "loop": {"steps": 2, "batch_size": 2, "eval_every": 1, "log_every": 1},
            "refine": {"num_chunks": 2, "margin": 8},
        },
        "arms": [
            {"name": "base", "method": "base"},
            {"name": "refine", "method": "refine"},
            {"name": "sft", "method": "sft"},
            {"name": "sft-compute", "method": "sft", "train": {"sft.match_compute_of": "refine"}},
            {"name": "uniform", "method": "refine", "train": {"refine.selection": "uniform"}},
        ],
        "seeds": [0, 1],
        "eval": {
            "suite": {"tasks": ["niah_single"], "lengths": [384], "niah": {"depths": [0, 100], "max_new_tokens": 4}},
            "long_documents": 2,
            "long_length": 128,
            "buckets": [32, 64],
        },
        "output_dir": str(out),
    }
    data.update(extra)
    return data


def test_grid_expands_arms_by_seeds_with_their_settings(tiny_corpus, tiny_study_base, tmp_path):
    cfg = from_dict(StudyConfig, study_dict(tiny_study_base, tiny_corpus, tmp_path))
    cells = expand_grid(cfg)
    assert [c.key for c in cells][:4] == ["base/seed-0", "base/seed-1", "refine/seed-0", "refine/seed-1"]
    assert len(cells) == 10 and cfg.reference == "sft"
    assert cells[0].train is None and cells[0].suite.seed == 0 and cells[1].suite.seed == 1
    refine1 = next(c for c in cells if c.key == "refine/seed-1")
    assert refine1.train.loop.seed == 1 and refine1.train.method == "refine" and refine1.train.model == str(tiny_study_base)
    matched = next(c for c in cells if c.key == "sft-compute/seed-1")
    assert matched.train.sft.match_compute_of == str(tmp_path / "cells" / "refine" / "seed-1" / "run")
    assert next(c for c in cells if c.key == "uniform/seed-0").train.refine.selection == "uniform"
    assert len({c.identity() for c in cells}) == len(cells)


def test_bad_arms_are_refused_before_anything_runs(tiny_corpus, tiny_study_base, tmp_path):
    def grid(**extra):
        return expand_grid(from_dict(StudyConfig, study_dict(tiny_study_base, tiny_corpus, tmp_path, **extra)))

    with pytest.raises(ConfigError, match=r"unknown key 'refine\.selektion'"):
        grid(arms=[{"name": "r", "method": "refine", "train": {"refine.selektion": "uniform"}}])
    with pytest.raises(ConfigError, match="must name an arm listed before it"):
        grid(arms=[{"name": "s", "method": "sft", "train": {"sft.match_compute_of": "r"}}, {"name": "r", "method": "refine"}])
    with pytest.raises(ConfigError, match="unique names"):
        grid(arms=[{"name": "a", "method": "sft"}, {"name": "a", "method": "refine"}])
    with pytest.raises(ConfigError, match="reference 'nope' is not an arm"):
        grid(reference="nope")
    with pytest.raises(ConfigError, match="heldout_lengths must be positive"):
        grid(eval={"heldout_lengths": [0]})


def test_the_heldout_wording_runs_at_its_own_lengths(tiny_corpus, tiny_study_base, tmp_path, monkeypatch):
    data = study_dict(tiny_study_base, tiny_corpus, tmp_path)
    data["eval"].update(
        suite={"tasks": ["niah_single"], "lengths": [384, 512]}, heldout_lengths=[384], validation=False, long_documents=0
    )
    cfg = from_dict(StudyConfig, data)
    runs = []

    def fake_suite(suite, model, tokenizer):
        runs.append((suite.niah.wording, list(suite.lengths)))
        return {"results": {"niah_single": {"score": 0.5}}}

    monkeypatch.setattr(study_runner, "run_suite", fake_suite)
    cell = expand_grid(cfg)[0]
    corpus_data = study_runner.TrainingData(cfg.train.data, 2, 0)
    metrics = study_runner.evaluate_cell(cell, tiny_study_base, cfg.eval, corpus_data)["metrics"]
    assert runs == [("ruler", [384, 512]), ("heldout", [384])]
    assert metrics["niah_single"] == metrics["heldout_niah_single"] == 0.5


def test_statistics_on_hand_made_numbers():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.mean == 3.0 and s.std == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1)) and s.n == 5
    assert 1.0 < s.low < 3.0 < s.high < 5.0
    assert s.low == pytest.approx(6 - s.high, abs=0.05)  # symmetric values: a symmetric interval
    # the bootstrap distribution of the mean of n values has the standard error std * sqrt((n-1)/n) / sqrt(n)
    x = np.random.default_rng(0).normal(size=40)
    low, high = bootstrap_interval(x)
    se = x.std() / np.sqrt(len(x))
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert summarize([7.0]).low == summarize([7.0]).high == 7.0 and summarize([7.0]).std == 0.0
    assert summarize([]).n == 0
    # paired: a constant advantage of +2 per seed is certain even though both arms vary a lot across seeds
    arm, ref = {0: 12.0, 1: 52.0, 2: 32.0}, {0: 10.0, 1: 50.0, 2: 30.0, 3: 99.0}
    d = paired_difference(arm, ref)
    assert (d.mean, d.low, d.high, d.n) == (2.0, 2.0, 2.0, 3) and d.excludes_zero()
    assert not summarize(list(arm.values())).excludes_zero() or True
    mixed = paired_difference({0: 1.0, 1: -1.0, 2: 0.5}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert mixed.low < 0 < mixed.high and not mixed.excludes_zero()
    assert not Summary(2.9, 3.7, 2.842e-15, 6.0, 5).excludes_zero()  # zero but for float rounding: touches 0
    assert Summary(2.9, 3.7, 1e-3, 6.0, 5).excludes_zero() and Summary(-2.9, 3.7, -6.0, -1e-3, 5).excludes_zero()


def test_report_renders_tables_and_figures_from_hand_made_cells(tmp_path):
    cfg = from_dict(
        StudyConfig,
        {"arms": [{"name": "refine", "method": "refine"}, {"name": "sft", "method": "sft"}], "seeds": [0, 1, 2]},
    )
    grid = lambda v: {"lengths": [512, 1024], "depths": [0.0, 100.0], "found": [[v, 1.0], [0.0, None]]}
    cells = []
    for seed in range(3):
        for arm, score, loss in (("refine", 60.0 + seed, 3.0 - 0.1 * seed), ("sft", 50.0 + seed, 3.1 - 0.1 * seed)):
            curve = [{"step": s, "compute_tokens": 100.0 * s, "acc_argmax": 0.2 + 0.01 * s} for s in (1, 2, 3)]
            metrics = {"niah_single": score, "val_loss": loss, "compute_tokens": 300.0, "train_seconds": 1.0}
            cells.append({"arm": arm, "seed": seed, "metrics": metrics, "curve": curve,
                          "niah_grids": {"niah_single": grid(0.5 if arm == "refine" else 0.0)}})  # fmt: skip
    report = write_report(cfg, cells, tmp_path).read_text()
    assert "| refine (n=3) | 61 +/- 1 |" in report
    assert "| refine | +10 [10, 10] * | -0.1 [-0.1, -0.1] * |" in report  # paired: refine - sft per seed
    for png in ("curve.png", "bars.png", "niah_single_diff.png"):
        assert (tmp_path / png).stat().st_size > 1000 and f"({png})" in report
    assert report.index("niah_single") < report.index("val_loss") < report.index("compute_tokens")

    # summary.json: the paired differences, which the demo quotes beside its own single-seed numbers
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["reference"] == "sft" and summary["seeds"] == [0, 1, 2]
    loss = summary["differences"]["refine"]["val_loss"]
    assert loss["mean"] == pytest.approx(-0.1) and loss["n"] == 3 and loss["excludes_zero"]
    results = {
        "refine": {"loss": 3.0, "acc_argmax": 0.30, "niah_single": 55.0, "niah_multikey": 20.0},
        "sft": {"loss": 3.2, "acc_argmax": 0.25, "niah_single": 50.0, "niah_multikey": 10.0},
    }
    quoted = "\n".join(study_comparison(tmp_path / "summary.json", results))
    assert "| val NTP loss | -0.200 | -0.100 [-0.100, -0.100] * |" in quoted
    assert "| niah_single (%) | +5.0 pts | +10.0 pts [+10.0, +10.0] * |" in quoted
    assert "niah_multikey" not in quoted  # not a metric of that study
    assert "val acc (argmax)" not in quoted  # not a metric of that study


@pytest.mark.slow
def test_a_study_resumes_where_it_stopped_and_rerenders_at_once(tiny_corpus, tiny_study_base, tmp_path, monkeypatch):
    out = tmp_path / "study"
    config = tmp_path / "study.yaml"
    data = study_dict(tiny_study_base, tiny_corpus, out)
    data["arms"] = data["arms"][:4]
    data["seeds"] = [0]
    config.write_text(yaml.safe_dump(data))
    real_run_cell, real_evaluate = study_runner.run_cell, study_runner.evaluate_cell
    calls = []

    def interrupted(cell, cfg, corpus_data):
        if cell.arm.name == "sft":
            raise KeyboardInterrupt  # the study is stopped while the third cell runs
        calls.append(cell.key)
        return real_run_cell(cell, cfg, corpus_data)

    monkeypatch.setattr(study_runner, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["study", "--config", str(config)])
    assert calls == ["base/seed-0", "refine/seed-0"] and (out / "cells/refine/seed-0/cell.json").is_file()
    first = (out / "cells/refine/seed-0/cell.json").read_text()

    # the stopped study reports the cells it has, running none
    assert main(["study", "--config", str(config), "report_only=true"]) == 0
    assert calls == ["base/seed-0", "refine/seed-0"]
    assert [c["arm"] for c in json.loads((out / "results.json").read_text())["cells"]] == ["base", "refine"]
    assert "| refine (n=1) |" in (out / "report.md").read_text()

    trained = []
    monkeypatch.setattr(study_runner, "run_cell", real_run_cell)
    real_training = study_runner.run_training
    monkeypatch.setattr(study_runner, "run_training", lambda cfg: trained.append(cfg.output_dir) or real_training(cfg))
    assert main(["study", "--config", str(config)]) == 0
    assert [p.split("/cells/")[1] for p in trained] == ["sft/seed-0/run", "sft-compute/seed-0/run"]
    assert (out / "cells/refine/seed-0/cell.json").read_text() == first  # finished cells are not redone
    results = json.loads((out / "results.json").read_text())
    assert [c["arm"] for c in results["cells"]] == ["base", "refine", "sft", "sft-compute"]
    cell = results["cells"][1]["metrics"]
    assert {"val_loss", "val_acc_argmax", "val_acc_sampled", "recall_acc", "niah_single", "heldout_niah_single"} <= set(cell)
    assert {"long_loss", "long_acc_argmax", "long_acc_sampled", "long_ppl@0-32", "long_ppl@64-128", "compute_tokens"} <= set(cell)
    matched = results["cells"][3]["metrics"]
    assert matched["steps"] > 2 and matched["compute_tokens"] == pytest.approx(cell["compute_tokens"], rel=0.5)
    assert results["cells"][0]["metrics"]["compute_tokens"] == 0

    # a finished study re-renders without training or evaluating anything
    monkeypatch.setattr(study_runner, "train_cell", lambda cell: pytest.fail("nothing should train"))
    monkeypatch.setattr(study_runner, "evaluate_cell", lambda *a: pytest.fail("nothing should be evaluated"))
    (out / "report.md").unlink()
    assert main(["study", "--config", str(config)]) == 0
    assert "Paired difference to `sft`" in (out / "report.md").read_text()
    assert main(["study", "--config", str(config), "train.loop.threads=1"]) == 0  # nor with other CPU threads

    # changed training settings never reuse a stored cell
    assert main(["study", "--config", str(config), "train.optim.lr=0.5"]) == 2

    # changed measurements evaluate the stored models again, without training them again
    monkeypatch.undo()
    log = (out / "cells/refine/seed-0/run/metrics.jsonl").read_text()
    evaluated = []
    monkeypatch.setattr(study_runner, "evaluate_cell", lambda cell, *a: evaluated.append(cell.key) or real_evaluate(cell, *a))
    assert main(["study", "--config", str(config), "eval.suite.lengths=[256]"]) == 0
    assert evaluated == ["base/seed-0", "refine/seed-0", "sft/seed-0", "sft-compute/seed-0"]
    assert (out / "cells/refine/seed-0/run/metrics.jsonl").read_text() == log
    again = json.loads((out / "results.json").read_text())["cells"][1]
    assert (
        again["train_identity"] == results["cells"][1]["train_identity"] and again["identity"] != results["cells"][1]["identity"]
    )
    assert again["metrics"]["compute_tokens"] == cell["compute_tokens"]
