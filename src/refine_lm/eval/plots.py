"""Figures of an evaluation: NIAH length x depth heatmaps, perplexity and accuracy by position."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def niah_heatmap(
    grid: Sequence[Sequence[float | None]], lengths: Sequence[int], depths: Sequence[float], title: str, path: Path
) -> Path:
    """A length (rows) x needle depth (columns) heatmap of the fraction of values found, in percent."""
    plt = _pyplot()
    import numpy as np

    values = np.array([[np.nan if v is None else 100 * v for v in row] for row in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(depths), 1.2 + 0.5 * len(lengths)))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_yticks(range(len(lengths)), [f"{n:,}" for n in lengths])
    ax.set_xlabel("needle depth (% of the context)")
    ax.set_ylabel("prompt length (tokens)")
    for i in range(len(lengths)):
        for j in range(len(depths)):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="values found (%)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def perplexity_by_position(summary: dict[str, Any], title: str, path: Path) -> Path:
    """Perplexity (left) and argmax / sampled next-token accuracy (right) per position bucket."""
    plt = _pyplot()
    buckets = [b for b in summary["buckets"] if b["tokens"]]
    labels = [f"{b['from']}-{b['to']}" for b in buckets]
    fig, (ppl, acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    ppl.plot(labels, [b["perplexity"] for b in buckets], marker="o")
    ppl.set_ylabel("perplexity")
    acc.plot(labels, [b["argmax_accuracy"] for b in buckets], marker="o", label="argmax")
    acc.plot(labels, [b["sampled_accuracy"] for b in buckets], marker="s", label="sampled, T = 1")
    acc.set_ylabel("next-token accuracy (%)")
    acc.legend()
    for ax in (ppl, acc):
        ax.set_xlabel("position of the predicted token")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
