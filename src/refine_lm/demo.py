"""``refine-lm demo`` (``make demo``): the main job end to end, in minutes on a laptop CPU.

Load the shipped DeltaNet base; evaluate it (held-out next-token accuracy, recall of synthetic
facts, a small needle-in-a-haystack suite); mid-train it with REFINE and, under the identical
budget (steps, batch, sequence length, optimiser updates), with the SFT baseline; evaluate both;
print the comparison table and write a report directory (markdown, loss/reward curves, NIAH
heatmaps before and after).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, to_dict
from .eval.niah import NIAHConfig
from .eval.suite import EvalConfig, run_suite
from .models.registry import load_model
from .optim import OptimConfig
from .refine.objective import RefineConfig
from .train.checkpoint import list_checkpoints
from .train.data import DataConfig, TrainingData
from .train.loop import LoopConfig
from .train.metrics import read_metrics
from .train.midtrain import SFTConfig, TrainConfig, midtrain


@dataclass
class DemoConfig:
    """Settings of ``refine-lm demo``.

    base: the model to start from (a checkpoint directory with its tokenizer).
    data: corpus, sequence length and validation sets (the corpus must be tokenised with the base's tokenizer).
    optim / loop / refine: the mid-training run; SFT gets the same loop, optimiser and number of
        optimiser updates per batch.
    niah_tasks / niah_lengths / niah: the needle-in-a-haystack suite run before and after.
    output_dir: the report directory (``report.md``, ``results.json``, PNGs; runs in ``runs/``).
    study: a seeded study's ``summary.json`` (``refine-lm study``) whose REFINE - SFT intervals the report
        quotes beside this run's own single-seed differences (null: none).
    """

    base: str = "bases/delta_net"
    data: DataConfig = field(
        default_factory=lambda: DataConfig(corpus="runs/data/default", seq_len=1024, validation_sequences=16, recall_sequences=16)
    )
    # the seeded study's regime (configs/study/mid.yaml), so its intervals and this run measure the same thing
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, schedule="constant"))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(steps=60, batch_size=4, eval_every=0))
    refine: RefineConfig = field(default_factory=RefineConfig)
    # the study's clearest REFINE - SFT differences (NIAH single and multiquery, over 1K, 2K and 4K), one
    # prompt per depth instead of its five
    niah_tasks: list[str] = field(default_factory=lambda: ["niah_single", "niah_multiquery"])
    niah_lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096])
    niah: NIAHConfig = field(
        default_factory=lambda: NIAHConfig(
            depths=[0, 12.5, 25, 37.5, 50, 62.5, 75, 87.5, 100], samples_per_depth=1, max_new_tokens=24
        )
    )
    output_dir: str = "runs/demo"
    study: str | None = "studies/mid/summary.json"


# demo result key -> the study's metric of the same measurement
STUDY_METRICS = {"loss": "val_loss", "acc_argmax": "val_acc_argmax", "acc_sampled": "val_acc_sampled", "recall_acc": "recall_acc"}


def study_comparison(path: str | Path, results: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown: REFINE - SFT in this run beside the study's paired interval over its seeds."""
    summary = json.loads(Path(path).read_text())
    differences = summary["differences"].get("refine", {})
    lines = [
        f"REFINE - SFT here (one seed) and in the seeded study `{path}` (base `{summary['base']}`, "
        f"{len(summary['seeds'])} seeds, paired by seed: mean [95% bootstrap interval]; `*`: beyond seed noise):",
        "",
        "| metric | this demo | the study |",
        "|---|---|---|",
    ]
    for key, label, fmt in COLUMNS:
        study = differences.get(STUDY_METRICS[key])
        if key not in results["refine"] or study is None:
            continue
        here = results["refine"][key] - results["sft"][key]
        scale = 100 if "%" in fmt else 1
        unit = " pts" if scale == 100 else ""
        mark = " *" if study["excludes_zero"] else ""
        lines.append(
            f"| {label} | {scale * here:+.3f}{unit} | {scale * study['mean']:+.3f}{unit} "
            f"[{scale * study['low']:+.3f}, {scale * study['high']:+.3f}]{mark} |"
        )
    for task in (k for k in results["refine"] if k.startswith("niah_") and k in differences):  # scores in %
        study, here = differences[task], results["refine"][task] - results["sft"][task]
        mark = " *" if study["excludes_zero"] else ""
        lines.append(
            f"| {task} (%) | {here:+.1f} pts | {study['mean']:+.1f} pts [{study['low']:+.1f}, {study['high']:+.1f}]{mark} |"
        )
    return lines


def evaluate(cfg: DemoConfig, model_dir: Path, name: str, data: TrainingData) -> dict[str, Any]:
    """Held-out NTP metrics and recall on the validation split, plus the NIAH suite; NIAH outputs go to ``eval/<name>``."""
    model = load_model(model_dir).eval()
    tokenizer = data.tokenizer()
    metrics = dict(data.validator()(model))
    out = Path(cfg.output_dir) / "eval" / name
    suite = EvalConfig(
        model=str(model_dir),
        tasks=cfg.niah_tasks,
        lengths=cfg.niah_lengths,
        niah=cfg.niah,
        output_dir=str(out),
        seed=cfg.loop.seed,
        progress=False,
        resume=False,
    )
    report = run_suite(suite, model, tokenizer)
    for task, result in report["results"].items():
        metrics[task] = result["score"]
    return metrics


def curves(runs: dict[str, Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, reward_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, run in runs.items():
        train = [r for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "train"]
        loss_ax.plot([r["step"] for r in train], [r["ntp_loss"] for r in train], label=f"{name}: NTP loss")
        if name == "refine":
            for key in ("reward_cosine_mean", "reward_exact_mean"):
                reward_ax.plot([r["step"] for r in train], [r[key] for r in train], label=key.removesuffix("_mean"))
    loss_ax.set(title="training NTP loss", xlabel="step", ylabel="nats")
    reward_ax.set(title="REFINE rollout rewards", xlabel="step", ylabel="mean reward")
    for ax in (loss_ax, reward_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


COLUMNS = [
    ("loss", "val NTP loss", "{:.3f}"),
    ("acc_argmax", "val acc (argmax)", "{:.2%}"),
    ("acc_sampled", "val acc (T=1)", "{:.2%}"),
    ("recall_acc", "recall acc", "{:.2%}"),
]


def comparison_table(results: dict[str, dict[str, Any]], niah_tasks: list[str]) -> str:
    header = [label for _, label, _ in COLUMNS] + [f"{t} (%)" for t in niah_tasks] + ["train time", "compute tokens"]
    lines = ["| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for name, r in results.items():
        cells = [fmt.format(r[key]) if key in r else "—" for key, _, fmt in COLUMNS]
        cells += [f"{r[t]:.1f}" if t in r else "—" for t in niah_tasks]
        cells += [f"{r['train_seconds']:.0f} s" if "train_seconds" in r else "—"]
        cells += [f"{r['compute_tokens']:,.0f}" if "compute_tokens" in r else "—"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo(cfg: DemoConfig) -> dict[str, dict[str, Any]]:
    started = time.perf_counter()
    base = Path(cfg.base)
    if not (base / "config.json").is_file():
        raise ConfigError(f"base model {base} not found (the shipped bases live in bases/; see bases/README.md)")
    if cfg.study and not Path(cfg.study).is_file():
        raise ConfigError(f"study: {cfg.study} not found (a refine-lm study's summary.json, or study=null)")
    out = Path(cfg.output_dir)
    if out.exists():
        shutil.rmtree(out)  # a demo report is always made from scratch
    out.mkdir(parents=True)
    cfg.refine = cfg.refine.for_phase("mid")
    data = TrainingData(cfg.data, cfg.loop.batch_size, cfg.loop.seed)

    print(f"[1/4] evaluating the base {base}")
    results = {"base": evaluate(cfg, base, "base", data)}
    runs = {}
    updates = cfg.refine.ppo_epochs * cfg.refine.mini_batches
    for i, method in enumerate(("refine", "sft"), start=2):
        budget = f"{cfg.loop.steps} steps x {cfg.loop.batch_size} x {cfg.data.seq_len} tokens"
        print(f"[{i}/4] mid-training with {method.upper()}: {budget}")
        run = out / "runs" / method
        train_cfg = TrainConfig(
            phase="mid",
            method=method,
            model=str(base),
            data=cfg.data,
            optim=copy.deepcopy(cfg.optim),
            loop=copy.deepcopy(cfg.loop),
            refine=cfg.refine,
            sft=SFTConfig(mini_batches=updates),
            output_dir=str(run),
        )
        midtrain(train_cfg)
        runs[method] = run
    print("[4/4] evaluating both")
    for method, run in runs.items():
        results[method] = evaluate(cfg, list_checkpoints(run)[-1], method, data)
        train = [r for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "train"]
        results[method]["train_seconds"] = sum(r["step_seconds"] for r in train)
        results[method]["compute_tokens"] = sum(r["compute_tokens"] for r in train)

    curves(runs, out / "curves.png")
    table = comparison_table(results, cfg.niah_tasks)
    heatmaps = "\n".join(
        f"| {task} | ![base](eval/base/{task}.png) | ![refine](eval/refine/{task}.png) | ![sft](eval/sft/{task}.png) |"
        for task in cfg.niah_tasks
    )
    report = [
        "# refine-lm demo",
        "",
        f"Base `{base}`, mid-trained {cfg.loop.steps} steps x {cfg.loop.batch_size} sequences x {cfg.data.seq_len} tokens "
        f"from `{cfg.data.corpus}` with REFINE (c={cfg.refine.num_chunks}, k={cfg.refine.rollout_len}, "
        f"n={cfg.refine.rollouts_per_position}, reward {cfg.refine.reward}, lambda_rl={cfg.refine.lambda_rl}) and with "
        f"SFT (same steps, batch, length, learning rate {cfg.optim.lr:g} and {updates} optimiser update(s) per batch). "
        "Validation: held-out real text (NTP loss, next-token accuracy) and held-out synthetic recall episodes "
        "(share of answer tokens predicted); NIAH on noise haystacks. A run this short on a model this small shows the "
        "machinery end to end; differences of this size are within run-to-run noise unless repeated over seeds.",
        "",
        table,
        "",
        *([*study_comparison(cfg.study, results), ""] if cfg.study else []),
        "![training curves](curves.png)",
        "",
        "| NIAH | base | REFINE | SFT |",
        "|---|---|---|---|",
        heatmaps,
        "",
        f"Total time: {time.perf_counter() - started:.0f} s. Settings: `config.json`; training logs: `runs/*/metrics.jsonl`.",
    ]
    (out / "report.md").write_text("\n".join(report) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    print("\n" + table + f"\n\nreport: {out / 'report.md'} ({time.perf_counter() - started:.0f} s)")
    return results
