"""Base models side by side on the same held-out data: ``refine-lm bench bases [key=value ...]``.

For every model directory in ``models``: parameters; next-token loss, perplexity, bits per byte and
argmax / sampled accuracy on ``windows`` windows of ``seq_len`` tokens spread over the test split's
real text of ``corpus`` (bits per byte compare models with different tokenizers); and recall (share
of answer tokens predicted) on the held-out validation episodes of each corpus in ``recall_corpora``
(the recall-episode corpus and the retrieval-episode corpus: each base is scored on both kinds).

Writes ``runs/bench/bases.json`` and prints a markdown table.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from refine_lm.config import load_config
from refine_lm.data import PreparedCorpus, SequenceDataset
from refine_lm.models.registry import load_model
from refine_lm.ops.dtypes import autocast, resolve_precision
from refine_lm.refine.ntp import next_token_metrics
from refine_lm.train.data import recall_accuracy


@dataclass
class BenchBasesConfig:
    models: list[str] = field(default_factory=lambda: ["bases/delta_net", "bases/gated_deltanet", "bases/lact"])
    corpus: str = "runs/data/default"  # its test split's real text is read
    seq_len: int = 1024
    windows: int = 32
    recall_corpora: list[str] = field(default_factory=lambda: ["runs/data/default", "runs/data/pretrain"])
    recall_windows: int = 32
    precision: str = "auto"
    threads: int = 0
    output: str = "runs/bench/bases.json"


def spread(n: int, count: int) -> list[int]:
    return np.linspace(0, n - 1, num=min(count, n)).round().astype(int).tolist()


def measure(model_dir: str, cfg: BenchBasesConfig) -> dict:
    model = load_model(model_dir).eval()
    precision = resolve_precision(cfg.precision, "cpu")
    corpus = PreparedCorpus(cfg.corpus)
    tokenizer = corpus.tokenizer()
    test = SequenceDataset(corpus, "test", cfg.seq_len, exclude_sources=["synthetic"])
    chosen = spread(len(test), cfg.windows)
    batches = [test.get_batch(chosen[i : i + 4]) for i in range(0, len(chosen), 4)]
    with torch.no_grad(), autocast(precision, "cpu"):
        ntp = next_token_metrics(model, batches)
        n_bytes = sum(len(tokenizer.decode(test[i][1:].tolist()).encode("utf-8")) for i in chosen)
        n_tokens = len(chosen) * (cfg.seq_len - 1)
        row = {
            "model": model_dir,
            "parameters": sum(p.numel() for p in model.parameters()),
            "test_ppl": ntp["ppl"],
            "test_bits_per_byte": ntp["loss"] * n_tokens / n_bytes / math.log(2),
            "test_acc_argmax": ntp["acc_argmax"],
            "test_acc_sampled": ntp["acc_sampled"],
        }
        for path in cfg.recall_corpora:
            episodes = SequenceDataset(path, "validation", cfg.seq_len, sources=["synthetic"], allow_empty=True)
            if len(episodes):
                row[f"recall_acc {Path(path).name}"] = recall_accuracy(model, episodes, spread(len(episodes), cfg.recall_windows))
    return row


def main(config_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> list[dict]:
    cfg = load_config(BenchBasesConfig, config_path, overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rows = [measure(m, cfg) for m in cfg.models]
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps({"settings": asdict(cfg), "rows": rows}, indent=2))
    keys = [k for k in rows[0] if k != "model"]
    print(f"held-out test split of {cfg.corpus}: {cfg.windows} windows of {cfg.seq_len} tokens (real text)")
    print("| model | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row in rows:
        cells = [f"{row[k]:,}" if isinstance(row[k], int) else f"{row[k]:.4g}" for k in keys]
        print(f"| {row['model']} | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    main(None, sys.argv[1:])
