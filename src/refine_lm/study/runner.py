"""``refine-lm study``: a grid of (arm x seed) runs from one base, each trained then evaluated.

An *arm* is a method with its settings (``refine`` at the paper's defaults, ``sft`` step-matched,
``sft`` compute-matched, an ablation, or ``base``: the starting model, untrained). Every cell
``(arm, seed)`` trains with ``loop.seed = seed`` (so cells of one seed see the same batches) and is
evaluated with the suite seeded by the same seed (the same prompts). A finished cell is stored as
``cells/<arm>/seed-<seed>/cell.json``; a study re-run skips finished cells, resumes an interrupted
training from its newest checkpoint, and re-renders the report from what is stored. A stored cell
whose settings differ from the study's present ones is refused, never silently reused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import ConfigError, _apply_override, from_dict, to_dict
from ..data import SequenceDataset
from ..eval.perplexity import bucket_edges, position_stats, summarise_perplexity
from ..eval.suite import EvalConfig, run_suite
from ..models.registry import load_model
from ..train.checkpoint import list_checkpoints
from ..train.data import TrainingData
from ..train.metrics import read_metrics
from ..train.midtrain import TrainConfig, run_training


@dataclass
class ArmConfig:
    """One row of the grid.

    name: its label in the report and its directory name.
    method: ``base`` (the starting model, not trained), ``refine`` or ``sft`` (phase mid), or
        ``refine`` / ``nested-sft`` / ``answer-sft`` (phase post).
    phase: ``mid`` or ``post``.
    train: settings of this arm's runs on top of the study's ``train`` (dotted keys of ``refine-lm
        train``, e.g. ``refine.selection: uniform``). ``sft.match_compute_of: <arm>`` gives the
        run of that arm with the same seed (listed earlier): compute-matched SFT.
    eval: settings of this arm's evaluation on top of the study's ``eval.suite`` (e.g. ``ttt: refine``).
    """

    name: str = ""
    method: Literal["base", "refine", "sft", "nested-sft", "answer-sft"] = "refine"
    phase: Literal["mid", "post"] = "mid"
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyEvalConfig:
    """What every cell is measured on.

    suite: settings of ``refine-lm eval`` (its keys, without model / output_dir / seed), e.g. tasks,
        lengths, niah; ``tasks: []`` runs no generation task.
    heldout_wording: also run the suite's NIAH tasks in the held-out wording (``niah.wording=heldout``),
        reported as ``heldout_<task>``: retrieval in phrasing no training data uses.
    heldout_lengths: context lengths of the held-out wording run (empty: the suite's lengths).
    validation: the run's validation sets (held-out NTP loss / accuracy, recall of held-out episodes),
        reported as ``val_*`` and ``recall_acc``.
    long_documents: windows of held-out test-split real text read for NTP loss and accuracy (argmax
        and sampled at T=1) and perplexity by position, reported as ``long_*`` (0: none).
    long_length: tokens per window.
    buckets: upper edges of the position buckets (empty: powers of two from 256).
    """

    suite: dict[str, Any] = field(default_factory=lambda: {"tasks": ["niah"], "lengths": [1024, 2048, 4096]})
    heldout_wording: bool = True
    heldout_lengths: list[int] = field(default_factory=list)
    validation: bool = True
    long_documents: int = 16
    long_length: int = 4096
    buckets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if any(n < 1 for n in self.heldout_lengths):
            raise ValueError(f"heldout_lengths must be positive token counts, got {self.heldout_lengths}")


@dataclass
class StudyConfig:
    """Settings of ``refine-lm study``.

    base: the model every arm starts from (a checkpoint directory with its tokenizer).
    train: settings every run shares (``refine-lm train``'s: data, optim, loop, refine, sft, qa).
    arms: the rows of the grid (at least one).
    seeds: every arm runs once per seed.
    reference: the arm the paired differences are taken against (default: the first ``sft`` arm).
    eval: what every cell is measured on.
    metrics: metrics the report's tables show, in order (empty: every metric the cells have).
    curve_metric: the validation metric plotted against training compute.
    output_dir: cells, ``results.json``, ``report.md`` and figures.
    report_only: run no cell; report the cells stored so far (while a study runs, or one stopped part-way:
        each arm's n says how many seeds it has).
    """

    base: str = "bases/delta_net"
    train: TrainConfig = field(default_factory=TrainConfig)
    arms: list[ArmConfig] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    reference: str | None = None
    eval: StudyEvalConfig = field(default_factory=StudyEvalConfig)
    metrics: list[str] = field(default_factory=list)
    curve_metric: str = "acc_argmax"
    output_dir: str = "runs/study"
    report_only: bool = False

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("arms: a study needs at least one arm")
        names = [a.name for a in self.arms]
        if any(not n or "/" in n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"arms need unique names without '/', got {names}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats, got {self.seeds}")
        if self.reference is None:
            self.reference = next((a.name for a in self.arms if a.method in ("sft", "nested-sft", "answer-sft")), None)
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference {self.reference!r} is not an arm (arms: {', '.join(names)})")


@dataclass
class Cell:
    """One (arm, seed) of the grid, with its fully resolved settings."""

    arm: ArmConfig
    seed: int
    directory: Path
    train: TrainConfig | None  # None for the base arm
    suite: EvalConfig
    match_compute_of: str | None = None  # the arm whose same-seed run sets this one's steps
    measures: dict[str, Any] = field(default_factory=dict)  # the study's eval settings beside the suite

    @property
    def key(self) -> str:
        return f"{self.arm.name}/seed-{self.seed}"

    def _settings(self) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        train = None if self.train is None else {**to_dict(self.train), "output_dir": None}
        if train is not None:
            train["sft"]["match_compute_of"] = self.match_compute_of
            train["loop"]["threads"] = None  # how many CPU threads ran a cell is no part of what it measured
        return train, {**to_dict(self.suite), "output_dir": None, "progress": None}

    def identity(self) -> str:
        """A digest of everything that decides this cell's numbers (a stored cell must match it)."""
        train, suite = self._settings()
        return _digest({"arm": self.arm.method, "train": train, "suite": suite, "measures": self.measures})

    def train_identity(self) -> str:
        """A digest of what decides the cell's trained model: a stored cell that matches it but not
        :meth:`identity` was measured otherwise, and is evaluated again without training again."""
        train, suite = self._settings()
        return _digest({"arm": self.arm.method, "train": train, "model": suite["model"]})


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _override(base: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for key, value in settings.items():
        _apply_override(data, f"{key}={json.dumps(value)}")
    return data


def expand_grid(cfg: StudyConfig) -> list[Cell]:
    """Every (arm, seed) cell, arms in order, each with its settings built and checked now (before any training)."""
    out = Path(cfg.output_dir)
    names = [a.name for a in cfg.arms]
    measures = {key: value for key, value in to_dict(cfg.eval).items() if key != "suite"}
    cells: list[Cell] = []
    for index, arm in enumerate(cfg.arms):
        for seed in cfg.seeds:
            directory = out / "cells" / arm.name / f"seed-{seed}"
            source = f"study arm {arm.name!r}"
            train = None
            match = None
            if arm.method != "base":
                settings = dict(arm.train)
                match = settings.pop("sft.match_compute_of", None)
                if match is not None:
                    if match not in names[:index]:
                        raise ConfigError(f"{source}: sft.match_compute_of {match!r} must name an arm listed before it")
                    if arm.method != "sft":
                        raise ConfigError(f"{source}: sft.match_compute_of applies to method sft, not {arm.method}")
                    settings["sft.match_compute_of"] = str(out / "cells" / match / f"seed-{seed}" / "run")
                data = _override(to_dict(cfg.train), settings)
                data.update(phase=arm.phase, method=arm.method, model=cfg.base, output_dir=str(directory / "run"))
                data["loop"]["seed"] = seed
                train = from_dict(TrainConfig, data, source)
            suite_data = _override(cfg.eval.suite, arm.eval)
            suite_data.update(model=cfg.base, seed=seed, output_dir=str(directory / "eval"), progress=False)
            suite = from_dict(EvalConfig, suite_data, f"{source} eval")
            cells.append(Cell(arm, seed, directory, train, suite, match, measures))
    return cells


# ----- one cell -----------------------------------------------------------------------------------
def train_cell(cell: Cell) -> Path:
    """Train the cell's run and return the model directory to evaluate. The loop resumes an interrupted run
    from its newest checkpoint and does nothing for a finished one."""
    if cell.train is None:
        return Path(cell.suite.model)
    run_training(copy.deepcopy(cell.train))
    return list_checkpoints(cell.train.output_dir)[-1]


def long_document_metrics(model, cell: Cell, cfg: StudyEvalConfig, data: TrainingData) -> dict[str, float]:
    """NTP loss, argmax / sampled accuracy and perplexity by position on held-out test-split windows."""
    windows = SequenceDataset(data.corpus, "test", cfg.long_length, exclude_sources=["synthetic"], allow_empty=True)
    if not len(windows):
        raise ConfigError(f"eval.long_documents: no test document of {data.corpus.path} has {cfg.long_length} tokens")
    chosen = np.linspace(0, len(windows) - 1, num=min(cfg.long_documents, len(windows))).round().astype(int)
    edges = bucket_edges(cfg.long_length, cfg.buckets)
    records = []
    for i in chosen:
        ids = windows[int(i)].tolist()
        buckets = position_stats(model, [ids], edges, doc_seeds=[cell.seed * 1_000_003 + int(i)])[0]
        records.append({"buckets": buckets})
    summary = summarise_perplexity(records, edges)
    overall = summary["overall"]
    metrics = {
        "long_loss": float(np.log(overall["perplexity"])),
        "long_acc_argmax": overall["argmax_accuracy"] / 100,
        "long_acc_sampled": overall["sampled_accuracy"] / 100,
    }
    for bucket in summary["buckets"]:
        metrics[f"long_ppl@{bucket['from']}-{bucket['to']}"] = bucket["perplexity"]
    return metrics


def evaluate_cell(cell: Cell, model_dir: Path, cfg: StudyEvalConfig, data: TrainingData) -> dict[str, Any]:
    model = load_model(model_dir).eval()
    tokenizer = data.tokenizer()
    metrics: dict[str, float] = {}
    grids: dict[str, Any] = {}
    with torch.no_grad():
        if cfg.validation:
            for key, value in data.validator()(model).items():
                metrics[key if key == "recall_acc" else f"val_{key}"] = value
        if cfg.long_documents:
            metrics.update(long_document_metrics(model, cell, cfg, data))
    suites = [("", cell.suite)]
    if cfg.heldout_wording and any(t.startswith("niah") for t in cell.suite.tasks):
        heldout = copy.deepcopy(cell.suite)
        heldout.niah.wording = "heldout"
        heldout.tasks = [t for t in heldout.tasks if t.startswith("niah")]
        if cfg.heldout_lengths:
            heldout.lengths = list(cfg.heldout_lengths)
        heldout.output_dir = str(Path(cell.suite.output_dir) / "heldout")
        suites.append(("heldout_", heldout))
    for prefix, suite in suites:
        if not suite.tasks:
            continue
        suite = copy.deepcopy(suite)
        suite.model = str(model_dir)
        report = run_suite(suite, model, tokenizer)
        for task, result in report["results"].items():
            metrics[prefix + task] = result["score"]
            if "heatmap" in result:
                grids[prefix + task] = result["heatmap"]
    return {"metrics": metrics, "niah_grids": grids}


def training_facts(cell: Cell) -> dict[str, Any]:
    """Compute, wall time and the validation curve (metric vs cumulative compute) of the cell's run."""
    if cell.train is None:
        return {"metrics": {"compute_tokens": 0.0, "train_seconds": 0.0}, "curve": []}
    records = read_metrics(Path(cell.train.output_dir) / "metrics.jsonl")
    compute, by_step = 0.0, {}
    for r in records:
        if r.get("split") == "train":
            compute += r.get("compute_tokens", 0.0)
            by_step[r["step"]] = compute
    curve = [{**r, "compute_tokens": by_step.get(r["step"], 0.0)} for r in records if r.get("split") == "validation"]
    train = [r for r in records if r.get("split") == "train"]
    metrics = {"compute_tokens": compute, "train_seconds": sum(r.get("step_seconds", 0.0) for r in train), "steps": len(train)}
    return {"metrics": metrics, "curve": curve}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # a cell is stored whole or not at all


def load_cell(cell: Cell) -> dict[str, Any] | None:
    """The stored result of a finished cell, or None when it has to run (or only be evaluated again: same
    training, other measurements); a stored cell trained with other settings is an error."""
    path = cell.directory / "cell.json"
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if stored.get("identity") == cell.identity():
        return stored
    if stored.get("train_identity") == cell.train_identity():
        return None
    raise ConfigError(
        f"{path}: this cell was trained with other settings than the study's present ones; use another output_dir, "
        f"or delete {cell.directory} to run it again"
    )


def run_cell(cell: Cell, cfg: StudyConfig, data: TrainingData) -> dict[str, Any]:
    stored = load_cell(cell)
    if stored is not None:
        return stored
    started = time.perf_counter()
    cell.directory.mkdir(parents=True, exist_ok=True)
    model_dir = train_cell(cell)
    facts = training_facts(cell)
    evaluated = evaluate_cell(cell, model_dir, cfg.eval, data)
    result = {
        "arm": cell.arm.name,
        "method": cell.arm.method,
        "seed": cell.seed,
        "identity": cell.identity(),
        "train_identity": cell.train_identity(),
        "model": str(model_dir),
        "metrics": {**evaluated["metrics"], **facts["metrics"]},
        "niah_grids": evaluated["niah_grids"],
        "curve": facts["curve"],
        "cell_seconds": time.perf_counter() - started,
    }
    _write_json(cell.directory / "cell.json", result)
    return result


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or resume) every cell, then write ``results.json``, ``report.md`` and the figures."""
    from .report import write_report

    cells = expand_grid(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored = {c.key: load_cell(c) for c in cells}
    pending = [c for c in cells if stored[c.key] is None]
    print(f"study {out}: {len(cfg.arms)} arms x {len(cfg.seeds)} seeds = {len(cells)} cells, {len(pending)} to run")
    if cfg.report_only:
        results = [r for r in stored.values() if r is not None]
        print(f"report_only: reporting the {len(results)} stored cells, running none")
    else:
        (out / "study.json").write_text(json.dumps(to_dict(cfg), indent=2))
        data = TrainingData(cfg.train.data, cfg.train.loop.batch_size, cfg.seeds[0])
        results = []
        bar = tqdm(cells, desc="study cells", dynamic_ncols=True, position=0)
        for cell in bar:
            bar.set_postfix_str(cell.key)
            results.append(run_cell(cell, cfg, data))
        bar.close()
    _write_json(out / "results.json", {"study": to_dict(cfg), "cells": results})
    report = write_report(cfg, results, out)
    print(f"report: {report}")
    return {"cells": results, "report": str(report)}
