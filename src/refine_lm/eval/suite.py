"""An evaluation run: settings, task names, running every task, results JSON, markdown table and figures.

``run_suite(cfg, model, tokenizer)`` is what ``refine-lm eval`` calls once the model and
tokenizer are loaded. It writes into ``cfg.output_dir``: ``results.json``, ``results.md``,
``niah_<variant>.png`` heatmaps, ``perplexity.png``, and ``cache/<task>.jsonl`` (one line per finished
example: prompt length, output, answer, score), which a re-run reuses.
"""

from __future__ import annotations

import functools
import json
import platform
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ..config import ConfigError
from ..data.records import read_texts
from ..data.tokenizer import TOKENIZER_FILES
from ..files import sha256_file
from ..ops.dtypes import Precision, resolve_precision
from ..refine.objective import RefineConfig
from . import longbench, niah, plots, qa
from .metrics import RougeImplementation
from .niah import NIAHConfig
from .perplexity import PerplexityConfig, bucket_edges, evaluate_perplexity, summarise_perplexity
from .runner import Evaluator, Example, ExampleCache, Scorer, mean

NIAH_TASKS = tuple(f"niah_{v}" for v in niah.VARIANTS)
LONGBENCH_TASKS = tuple(f"longbench/{d}" for d in longbench.TASKS)
TASK_NAMES = (*NIAH_TASKS, "ruler_qa", "synthetic_qa", *LONGBENCH_TASKS, "perplexity")
GROUPS = {"niah": NIAH_TASKS, "longbench": LONGBENCH_TASKS}


def expand_tasks(names: Sequence[str]) -> list[str]:
    """Task names with the groups ``niah`` and ``longbench`` expanded, in order, without repeats."""
    tasks: list[str] = []
    for name in names:
        members = GROUPS.get(name, (name,))
        for task in members:
            if task not in TASK_NAMES:
                raise ConfigError(f"unknown task {task!r} (known: niah, longbench, {', '.join(TASK_NAMES)})")
            if task not in tasks:
                tasks.append(task)
    return tasks


@dataclass
class EvalConfig:
    r"""Settings of ``refine-lm eval``.

    model: a checkpoint directory (ours, or a flash-linear-attention one) with its tokenizer, or
        ``random:<arch>[:<preset>]`` (then ``tokenizer`` is required).
    tokenizer: a tokenizer directory; default: the model directory.
    tasks: task names or groups: ``niah`` (= niah_single, niah_multikey, niah_multiquery,
        niah_multivalue), ``ruler_qa`` (files at ``qa_path``), ``synthetic_qa`` (made-up documents at
        each of ``lengths``), ``longbench`` (the 16 English tasks) or ``longbench/<dataset>``,
        ``perplexity`` (documents at ``perplexity.path``).
    lengths: prompt lengths in tokens of the generated tasks (NIAH, synthetic QA).
    limit: at most this many examples per task (per task and length for generated tasks, per file for
        RULER QA; documents for perplexity); None: all.
    seed: seeds generated prompts, sampled generation and sampled accuracy.
    batch_size: prompts (or perplexity documents) read and generated together.
    output_dir: where results, figures and the per-example cache go.
    max_length: the model's maximum prompt length in tokens: longer QA / LongBench prompts lose
        their middle (never their end). Generated tasks are built to their length and never cut.
    niah: how NIAH prompts are generated (haystack, keys, values, depths, ...).
    qa_path: RULER QA file(s): JSONL / JSON / parquet with ``prompt`` and ``answer``, or a directory.
    qa_max_new_tokens: generation budget of ``ruler_qa`` and ``synthetic_qa``.
    synthetic_qa_per_length: examples per length of ``synthetic_qa``.
    longbench_path: LongBench data: a file or directory, original JSONL or pre-built prompts.
    longbench_prompts: a JSON file of prompt templates per dataset (e.g. the official
        dataset2prompt.json) replacing this project's templates.
    longbench_rouge: ROUGE-L of the summary tasks: ``rouge`` (LongBench's scorer, the default) or
        ``rouge-score`` (Google's package: lower case, no punctuation; higher scores, as most other tools report).
    perplexity: documents, length and position buckets of the ``perplexity`` task.
    do_sample / temperature / top_p: sampled generation (greedy by default).
    device / precision / backend: where and how the model runs (``fla`` needs CUDA).
    resume: reuse finished examples from the cache in ``output_dir`` (a changed model, setting or
        prompt never reuses a stale answer).
    progress: show progress bars.
    ttt: test-time training before answering each prompt: ``none`` (default), ``refine`` (REFINE +
        NTP steps on the prompt's own text) or ``ntp`` (NTP steps); see ``eval/ttt.py``. Applies to
        the generation tasks, not to perplexity.
    ttt_steps / ttt_lr: adaptation steps per prompt and the AdamW learning rate (constant; betas,
        weight decay 0.01 and gradient clip 1.0 as in training).
    ttt_mode: ``episodic`` (weights and optimiser restored after every example: answers do not depend
        on test order) or ``accumulating`` (carried across the test set, in evaluation order).
    ttt_params: which parameters adapt: ``[all]``, or regular expressions searched in parameter names
        (e.g. ``attn\.(q|k|v|b)_proj``; on the command line write alternatives with ``|``, not commas).
    ttt_refine: REFINE's settings at test time (unset reward / lambda_rl take the paper's test-time
        defaults: exact, 0.4; lambda_ntp 1).
    ttt_memory_every: on CPU, measure the adaptation's peak memory on every n-th example (0: never): the
        tensor tracker slows a small model's adaptation several-fold, and the seconds per example are
        averaged over the other examples. On CUDA every example is measured, at no cost.
    """

    model: str = ""
    tokenizer: str | None = None
    tasks: list[str] = field(default_factory=lambda: ["niah"])
    lengths: list[int] = field(default_factory=lambda: [4096, 8192, 16384])
    limit: int | None = None
    seed: int = 0
    batch_size: int = 8
    output_dir: str = "runs/eval"
    max_length: int = 16384
    niah: NIAHConfig = field(default_factory=NIAHConfig)
    qa_path: str | None = None
    qa_max_new_tokens: int = 32
    synthetic_qa_per_length: int = 20
    longbench_path: str | None = None
    longbench_prompts: str | None = None
    longbench_rouge: RougeImplementation = "rouge"
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    device: str = "cpu"
    precision: Precision = "auto"
    backend: Literal["chunk", "naive", "fla", "auto"] = "chunk"
    resume: bool = True
    progress: bool = True
    ttt: Literal["none", "refine", "ntp"] = "none"
    ttt_steps: int = 1
    ttt_lr: float = 1e-5
    ttt_mode: Literal["episodic", "accumulating"] = "episodic"
    ttt_params: list[str] = field(default_factory=lambda: ["all"])
    ttt_refine: RefineConfig = field(default_factory=RefineConfig)
    ttt_memory_every: int = 10

    def __post_init__(self) -> None:
        if self.ttt_steps < 1 or self.ttt_lr <= 0:
            raise ValueError(f"ttt_steps must be >= 1 and ttt_lr > 0, got {self.ttt_steps} and {self.ttt_lr}")
        if not self.model:
            raise ValueError("model is required: a checkpoint directory or random:<arch>[:<preset>]")
        if self.model.startswith("random:") and not self.tokenizer:
            raise ValueError("a random:... model needs tokenizer=DIR")
        tasks = expand_tasks(self.tasks)
        if not self.lengths or any(n < 1 for n in self.lengths):
            raise ValueError(f"lengths must be positive token counts, got {self.lengths}")
        for name in ("batch_size", "max_length", "qa_max_new_tokens", "synthetic_qa_per_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1 (or null for all examples)")
        needs = {"ruler_qa": ("qa_path", self.qa_path), "perplexity": ("perplexity.path", self.perplexity.path)}
        for task, (setting, value) in needs.items():
            if task in tasks and not value:
                raise ValueError(f"task {task} needs {setting}")
        if any(t in LONGBENCH_TASKS for t in tasks) and not self.longbench_path:
            raise ValueError("LongBench tasks need longbench_path (a file or directory of LongBench data)")


def _digest(directory: Path) -> dict[str, str]:
    """sha256 of the files of ``directory`` that decide a model's outputs: its config, weights and tokenizer files."""
    wanted = {"config.json", *TOKENIZER_FILES}
    out = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and (path.name in wanted or path.suffix in (".safetensors", ".bin", ".pt")):
            out[path.name] = sha256_file(path)
    return out


def fingerprint(cfg: EvalConfig) -> str:
    """What identifies answers in the cache besides the prompt: the model and tokenizer directories by the content
    of every file that decides outputs (config.json, weights, tokenizer files: a checkpoint rewritten in place
    is never mistaken for the old one), and every generation setting."""
    keys = ("model", "tokenizer", "max_length", "do_sample", "temperature", "top_p", "seed", "precision", "backend")
    identity = {k: getattr(cfg, k) for k in keys}
    identity["precision"] = resolve_precision(cfg.precision, cfg.device)  # what "auto" means on this machine
    if cfg.ttt != "none":  # adapted answers are other answers
        ttt_keys = ("ttt", "ttt_steps", "ttt_lr", "ttt_mode", "ttt_params", "ttt_refine")
        identity.update({k: asdict(v) if k == "ttt_refine" else v for k in ttt_keys for v in [getattr(cfg, k)]})
    for key in ("model", "tokenizer"):
        directory = Path(getattr(cfg, key) or "")
        if getattr(cfg, key) and directory.is_dir():
            identity[f"{key}_files"] = _digest(directory)
    return json.dumps(identity, sort_keys=True)


def make_evaluator(cfg: EvalConfig, model, tokenizer, ttt_class: type | None = None) -> Evaluator:
    """The evaluator of ``cfg``: plain, or a :class:`~refine_lm.eval.ttt.TestTimeTrainer` (or ``ttt_class``, a
    subclass of it) when ``ttt`` is set."""
    settings = dict(
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        seed=cfg.seed,
        precision=cfg.precision,
        progress=cfg.progress,
        fingerprint=fingerprint(cfg),
    )
    if cfg.ttt == "none":
        return Evaluator(model, tokenizer, **settings)
    from .ttt import TestTimeTrainer

    return (ttt_class or TestTimeTrainer)(
        model, tokenizer, method=cfg.ttt, steps=cfg.ttt_steps, lr=cfg.ttt_lr, mode=cfg.ttt_mode, params=cfg.ttt_params,
        refine=cfg.ttt_refine, memory_every=cfg.ttt_memory_every, **settings,
    )  # fmt: skip


def _summary(records: Sequence[dict[str, Any]], by: str | None = "length") -> dict[str, Any]:
    """Mean score x100, example count, truncated count, and (optionally) the mean per value of ``meta[by]``."""
    out: dict[str, Any] = {
        "score": 100 * mean([r["score"] for r in records]),
        "examples": len(records),
        "truncated": sum(bool(r["truncated"]) for r in records),
    }
    adapted = [r for r in records if "ttt_seconds" in r]
    if adapted:  # what test-time training added per example (timed without the CPU memory tracker where possible)
        timed = [r for r in adapted if not r.get("ttt_tracked")] or adapted
        peaks = [r["ttt_peak_bytes"] for r in adapted if r.get("ttt_peak_bytes") is not None]
        out["ttt"] = {
            "examples": len(adapted),
            "seconds_per_example": mean([r["ttt_seconds"] for r in timed]),
            "timed_examples": len(timed),
            "peak_bytes_mean": mean(peaks) if peaks else None,
            "peak_bytes_max": max(peaks) if peaks else None,
            "memory_examples": len(peaks),
        }
    if by:
        groups: dict[Any, list[float]] = defaultdict(list)
        for r in records:
            groups[r["meta"].get(by)].append(r["score"])
        out[f"by_{by}"] = {str(k): 100 * mean(v) for k, v in groups.items()}
    return out


def run_suite(cfg: EvalConfig, model, tokenizer, evaluator: Evaluator | None = None) -> dict[str, Any]:
    """Run every task of ``cfg`` and write results, table and figures into ``cfg.output_dir``."""
    out_dir = Path(cfg.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output_dir {out_dir} is a file")
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluator = evaluator or make_evaluator(cfg, model, tokenizer)
    tasks = expand_tasks(cfg.tasks)
    limit = cfg.limit

    def cache(task: str) -> ExampleCache | None:
        if not cfg.resume:
            return None
        return ExampleCache(out_dir / "cache" / f"{task.replace('/', '__')}.jsonl", evaluator.fingerprint)

    def run(task: str, examples: list[Example], score: Scorer) -> list[dict[str, Any]]:
        if not examples:
            raise ConfigError(f"task {task}: no examples")
        return evaluator.run(examples, score, cache(task))

    results: dict[str, Any] = {}
    figures: list[str] = []
    corpus = None
    if cfg.niah.haystack == "corpus" and any(t in NIAH_TASKS for t in tasks):
        corpus = [s for text in read_texts(cfg.niah.corpus_path) for s in niah.split_sentences(text)]
        if not corpus:
            raise ConfigError(f"{cfg.niah.corpus_path}: no sentences for the corpus haystack")
    for task in (t for t in tasks if t in NIAH_TASKS):
        variant = task.removeprefix("niah_")
        builder = niah.NIAHBuilder(variant, cfg.niah, tokenizer, seed=cfg.seed, corpus=corpus)
        examples = [e for n in cfg.lengths for e in builder.examples(n, limit)]
        records = run(task, examples, niah.score_niah)
        results[task] = _summary(records)
        grid = niah.heatmap_grid(records, cfg.lengths, cfg.niah.depths)
        results[task]["heatmap"] = {"lengths": cfg.lengths, "depths": cfg.niah.depths, "found": grid}
        title = f"NIAH {variant} ({cfg.niah.haystack} haystack, {cfg.niah.values}): {results[task]['score']:.1f}%"
        figures.append(str(plots.niah_heatmap(grid, cfg.lengths, cfg.niah.depths, title, out_dir / f"{task}.png")))
    if "ruler_qa" in tasks:
        records = run("ruler_qa", qa.load_qa_examples(cfg.qa_path, cfg.qa_max_new_tokens, limit=limit), qa.score_qa)
        results["ruler_qa"] = _summary(records)
        results["ruler_qa"]["by_subtask"] = _summary(records, by="subtask")["by_subtask"]
    if "synthetic_qa" in tasks:
        per_length = min(limit or cfg.synthetic_qa_per_length, cfg.synthetic_qa_per_length)
        examples = qa.synthetic_qa_examples(tokenizer, cfg.lengths, per_length, cfg.seed, cfg.qa_max_new_tokens)
        results["synthetic_qa"] = _summary(run("synthetic_qa", examples, qa.score_qa))
    wanted = [t.removeprefix("longbench/") for t in tasks if t in LONGBENCH_TASKS]
    if wanted:
        examples = longbench.load_longbench(cfg.longbench_path, wanted, cfg.longbench_prompts)
        for dataset in wanted:
            task = f"longbench/{dataset}"
            subset = [e for e in examples if e.task == task][:limit]
            score = functools.partial(longbench.score_longbench, rouge=cfg.longbench_rouge)
            results[task] = _summary(run(task, subset, score), by=None)
        results["longbench"] = {"average": mean([results[f"longbench/{d}"]["score"] for d in wanted]), "tasks": len(wanted)}
    if "perplexity" in tasks:
        length = cfg.perplexity.length or max(cfg.lengths)
        edges = bucket_edges(length, cfg.perplexity.buckets)
        texts = read_texts(cfg.perplexity.path)[:limit]
        records = evaluate_perplexity(
            model, tokenizer, texts, length, edges, batch_size=cfg.batch_size, seed=cfg.seed, cache=cache("perplexity"),
            progress=cfg.progress, precision=cfg.precision,
        )  # fmt: skip
        results["perplexity"] = summarise_perplexity(records, edges)
        title = f"{cfg.model}: {len(records)} documents, first {length:,} tokens"
        figures.append(str(plots.perplexity_by_position(results["perplexity"], title, out_dir / "perplexity.png")))

    report = {
        "model": cfg.model,
        "config": asdict(cfg),
        "results": results,
        "ttt": evaluator.describe() if hasattr(evaluator, "describe") else None,
        "throughput": evaluator.throughput.as_dict(),
        "environment": {"torch": torch.__version__, "device": cfg.device, "machine": platform.machine()},
        "figures": figures,
    }
    table = markdown_table(report)
    (out_dir / "results.json").write_text(json.dumps(report, indent=2, default=str))
    (out_dir / "results.md").write_text(table + "\n")
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """The results as markdown: generated/QA tasks by length, LongBench per task + average, perplexity by position."""
    results, lengths = report["results"], report["config"]["lengths"]
    lines = [f"Model: `{report['model']}`", ""]
    by_length = [t for t in results if "by_length" in results[t]]
    if by_length:
        lines += [
            "| task | examples | score | " + " | ".join(f"{n:,}" for n in lengths) + " |",
            "|---" * (3 + len(lengths)) + "|",
        ]
        for task in by_length:
            r = results[task]
            cells = [f"{r['by_length'][str(n)]:.1f}" if str(n) in r["by_length"] else "" for n in lengths]
            lines.append(f"| {task} | {r['examples']} | **{r['score']:.1f}** | " + " | ".join(cells) + " |")
        if "ruler_qa" in results:
            subtasks = ", ".join(f"{k}: {v:.1f}" for k, v in results["ruler_qa"]["by_subtask"].items())
            lines += ["", f"ruler_qa by task: {subtasks} (lengths are the files' max_seq_length)"]
        lines.append("")
    lb = [t for t in results if t.startswith("longbench/")]
    if lb:
        lines += ["| LongBench task | examples | truncated | score |", "|---|---|---|---|"]
        for task in lb:
            r = results[task]
            lines.append(f"| {task.removeprefix('longbench/')} | {r['examples']} | {r['truncated']} | {r['score']:.1f} |")
        lines += [f"| **average** ({results['longbench']['tasks']} tasks) | | | **{results['longbench']['average']:.1f}** |", ""]
    if "perplexity" in results:
        p = results["perplexity"]
        lines += [
            f"Perplexity and next-token accuracy by position ({p['documents']} documents):",
            "",
            "| positions | tokens | perplexity | argmax acc. (%) | sampled acc. T=1 (%) | entropy (nats) |",
            "|---|---|---|---|---|---|",
        ]
        for b in [*p["buckets"], {"from": "all", "to": "", **p["overall"]}]:
            if b["tokens"]:
                span = f"{b['from']}-{b['to']}" if b["to"] != "" else "all"
                lines.append(
                    f"| {span} | {b['tokens']:,} | {b['perplexity']:.2f} | {b['argmax_accuracy']:.1f} | "
                    f"{b['sampled_accuracy']:.1f} | {b['entropy']:.2f} |"
                )
        lines.append("")
    ttt = report.get("ttt")
    if ttt:
        lines.append(
            f"Test-time training: {ttt['method']}, {ttt['steps']} step(s) at lr {ttt['lr']:g}, {ttt['mode']}, "
            f"{ttt['adapted_parameters']:,} of {ttt['total_parameters']:,} parameters adapted."
        )
        for task, r in results.items():
            if isinstance(r, dict) and "ttt" in r:
                c = r["ttt"]
                memory = (
                    f" and +{c['peak_bytes_mean'] / 2**20:,.1f} MiB peak (max {c['peak_bytes_max'] / 2**20:,.1f} MiB, "
                    f"{c['memory_examples']} measured)"
                    if c["memory_examples"]
                    else ""
                )
                lines.append(f"- {task}: +{c['seconds_per_example']:.2f} s{memory} per example, {c['examples']} examples")
        lines.append("")
    t = report["throughput"]
    if t["prompt_tokens"]:
        cached = ""
        if t["cached_examples"]:
            cached = f"; {t['cached_examples']} examples from the cache, timed by the run that answered them"
        lines.append(
            f"Evaluator throughput: prefill {t['prefill_tokens_per_s']:,.0f} tokens/s ({t['prompt_tokens']:,} prompt tokens), "
            f"generation {t['generated_tokens_per_s']:,.1f} tokens/s ({t['generated_tokens']:,} tokens){cached}."
        )
    return "\n".join(lines).rstrip()
