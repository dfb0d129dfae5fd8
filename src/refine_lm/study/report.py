"""A study's report: markdown tables over seeds and PNG figures, made from the stored cells alone.

- ``report.md``: per arm and metric the mean +/- std and the 95% bootstrap interval of the mean; the
  paired difference to the reference arm per seed, with its interval (marked where it excludes 0);
  every run's raw values.
- ``curve.png``: a validation metric against cumulative training compute, mean over seeds with a
  band from the lowest to the highest seed.
- ``bars.png``: the main metrics per arm, with the 95% intervals as error bars.
- ``niah_<task>_diff.png``: length x depth heatmaps of the first REFINE arm minus the reference,
  mean over seeds (positive: REFINE finds more needles there).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .stats import Summary, paired_difference, summarize

# the order metrics are listed in when the study does not choose them
_ORDER = ("niah_", "heldout_niah_", "ruler_qa", "synthetic_qa", "recall_acc", "val_", "long_", "compute_tokens", "train_seconds")


def metric_names(cells: list[dict[str, Any]], chosen: list[str]) -> list[str]:
    if chosen:
        return list(chosen)
    found = list(dict.fromkeys(k for c in cells for k in c["metrics"] if k != "steps"))

    def rank(name: str) -> tuple[int, int]:
        for i, prefix in enumerate(_ORDER):
            if name.startswith(prefix):
                return i, found.index(name)
        return len(_ORDER), found.index(name)

    return sorted(found, key=rank)


def by_arm(cells: list[dict[str, Any]], metric: str) -> dict[str, dict[int, float]]:
    """arm -> seed -> value of ``metric`` (cells without it are left out)."""
    table: dict[str, dict[int, float]] = defaultdict(dict)
    for cell in cells:
        if metric in cell["metrics"] and cell["metrics"][metric] is not None:
            table[cell["arm"]][cell["seed"]] = float(cell["metrics"][metric])
    return table


def _number(x: float) -> str:
    return "—" if x is None or np.isnan(x) else f"{x:.4g}"


def _interval(s: Summary) -> str:
    return f"[{_number(s.low)}, {_number(s.high)}]"


def tables(cfg, cells: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    arms = [a.name for a in cfg.arms]
    lines: list[str] = []
    header = "| arm | " + " | ".join(metrics) + " |"
    rule = "|---" * (len(metrics) + 1) + "|"
    values = {m: by_arm(cells, m) for m in metrics}
    summaries = {m: {a: summarize(list(values[m].get(a, {}).values())) for a in arms} for m in metrics}
    lines += ["### Mean +/- std over seeds", "", header, rule]
    for a in arms:
        row = [f"{_number(summaries[m][a].mean)} +/- {_number(summaries[m][a].std)}" for m in metrics]
        lines.append(f"| {a} (n={max(summaries[m][a].n for m in metrics)}) | " + " | ".join(row) + " |")
    lines += ["", "### 95% bootstrap interval of the mean", "", header, rule]
    for a in arms:
        lines.append(f"| {a} | " + " | ".join(_interval(summaries[m][a]) for m in metrics) + " |")
    if cfg.reference is not None:
        lines += [
            "",
            f"### Paired difference to `{cfg.reference}` (same seed: same data order and prompts), mean [95% interval]",
            "",
            "`*`: the interval excludes 0 (a difference beyond seed noise).",
            "",
            header,
            rule,
        ]
        for a in arms:
            if a == cfg.reference:
                continue
            row = []
            for m in metrics:
                d = paired_difference(values[m].get(a, {}), values[m].get(cfg.reference, {}))
                row.append("—" if d.n == 0 else f"{d.mean:+.4g} {_interval(d)}{' *' if d.excludes_zero() else ''}")
            lines.append(f"| {a} | " + " | ".join(row) + " |")
    lines += ["", "### Every run", "", "| arm | seed | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for cell in cells:
        lines.append(
            f"| {cell['arm']} | {cell['seed']} | " + " | ".join(_number(cell["metrics"].get(m, np.nan)) for m in metrics) + " |"
        )
    return lines


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curve_figure(cfg, cells: list[dict[str, Any]], path: Path) -> Path | None:
    """``cfg.curve_metric`` of the validations during training against cumulative compute, per arm."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for arm in cfg.arms:
        runs = [c["curve"] for c in cells if c["arm"] == arm.name and c["curve"]]
        runs = [[p for p in run if cfg.curve_metric in p] for run in runs]
        runs = [run for run in runs if run]
        if not runs:
            continue
        n = min(len(r) for r in runs)
        x = np.mean([[p["compute_tokens"] for p in r[:n]] for r in runs], axis=0)
        y = np.asarray([[p[cfg.curve_metric] for p in r[:n]] for r in runs])
        ax.plot(x, y.mean(0), marker="o", ms=3, label=f"{arm.name} ({len(runs)} seeds)")
        ax.fill_between(x, y.min(0), y.max(0), alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xlabel="training compute (forward-equivalent tokens)", ylabel=f"validation {cfg.curve_metric}")
    ax.set_title(f"{cfg.curve_metric} vs compute: mean over seeds, band = min..max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def bar_figure(cfg, cells: list[dict[str, Any]], metrics: list[str], path: Path) -> Path | None:
    """One panel per metric: the mean per arm with its 95% bootstrap interval."""
    shown = [m for m in metrics if m not in ("compute_tokens", "train_seconds")][:8]
    if not shown:
        return None
    plt = _pyplot()
    cols = min(4, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False)
    arms = [a.name for a in cfg.arms]
    for ax, metric in zip(axes.flat, shown):
        values = by_arm(cells, metric)
        s = [summarize(list(values.get(a, {}).values())) for a in arms]
        means = np.array([x.mean for x in s])
        err = np.array([[x.mean - x.low for x in s], [x.high - x.mean for x in s]])
        ax.bar(range(len(arms)), means, yerr=np.nan_to_num(err), capsize=3, color="tab:blue", alpha=0.75)
        ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right", fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def niah_difference_figures(cfg, cells: list[dict[str, Any]], out: Path) -> list[Path]:
    """Length x depth heatmaps of (first REFINE arm - reference), mean over the seeds both ran."""
    refine = next((a.name for a in cfg.arms if a.method == "refine"), None)
    if refine is None or cfg.reference is None:
        return []
    plt = _pyplot()
    paths = []
    tasks = sorted({t for c in cells for t in c.get("niah_grids", {})})
    for task in tasks:
        grids = {(c["arm"], c["seed"]): c["niah_grids"][task] for c in cells if task in c.get("niah_grids", {})}
        seeds = sorted({s for a, s in grids if a == refine} & {s for a, s in grids if a == cfg.reference})
        if not seeds:
            continue
        layout = grids[(refine, seeds[0])]
        as_array = lambda g: np.array([[np.nan if v is None else v for v in row] for row in g["found"]], dtype=float)
        diff = np.mean([as_array(grids[(refine, s)]) - as_array(grids[(cfg.reference, s)]) for s in seeds], axis=0) * 100
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(layout["depths"]), 1.2 + 0.5 * len(layout["lengths"])))
        image = ax.imshow(diff, cmap="RdBu", vmin=-100, vmax=100, aspect="auto")
        ax.set_xticks(range(len(layout["depths"])), [f"{d:g}" for d in layout["depths"]], fontsize=7)
        ax.set_yticks(range(len(layout["lengths"])), [str(n) for n in layout["lengths"]], fontsize=7)
        for i in range(diff.shape[0]):
            for j in range(diff.shape[1]):
                if not np.isnan(diff[i, j]):
                    ax.text(j, i, f"{diff[i, j]:+.0f}", ha="center", va="center", fontsize=7)
        ax.set(xlabel="depth (%)", ylabel="length (tokens)")
        ax.set_title(f"{task}: {refine} - {cfg.reference} (pp, {len(seeds)} seeds)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.05)
        fig.tight_layout()
        path = out / f"{task}_diff.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def paired_summary(cfg, cells: list[dict[str, Any]], metrics: list[str]) -> dict[str, Any]:
    """Every arm's paired difference to the reference arm, per metric (what ``summary.json`` holds, and the
    demo quotes)."""
    differences: dict[str, dict[str, Any]] = {}
    for arm in (a.name for a in cfg.arms if a.name != cfg.reference):
        for m in metrics:
            values = by_arm(cells, m)
            d = paired_difference(values.get(arm, {}), values.get(cfg.reference, {}))
            if d.n:
                differences.setdefault(arm, {})[m] = {**asdict(d), "excludes_zero": d.excludes_zero()}
    return {"base": cfg.base, "reference": cfg.reference, "seeds": list(cfg.seeds), "differences": differences}


def write_report(cfg, cells: list[dict[str, Any]], out: Path) -> Path:
    metrics = metric_names(cells, cfg.metrics)
    if cfg.reference is not None:
        (out / "summary.json").write_text(json.dumps(paired_summary(cfg, cells, metrics), indent=2) + "\n")
    figures = [
        curve_figure(cfg, cells, out / "curve.png"),
        bar_figure(cfg, cells, metrics, out / "bars.png"),
        *niah_difference_figures(cfg, cells, out),
    ]
    arms = "\n".join(
        f"- `{a.name}`: {a.method} ({a.phase})" + (f", {a.train}" if a.train else "") + (f", eval {a.eval}" if a.eval else "")
        for a in cfg.arms
    )
    lines = [
        f"# Study `{out.name}`",
        "",
        f"Base `{cfg.base}`; seeds {cfg.seeds}; reference arm `{cfg.reference}`. Arms:",
        "",
        arms,
        "",
        *tables(cfg, cells, metrics),
        "",
        *[f"![{p.stem}]({p.name})" for p in figures if p is not None],
        "",
        "Settings: `study.json`; every run's metrics: `results.json`; the paired differences: `summary.json`; "
        "each cell: `cells/<arm>/seed-<seed>/`.",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
