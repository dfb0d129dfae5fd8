"""How soon does a fresh model find a copy circuit? ``refine-lm bench copy [key=value ...]``.

Every arm trains a freshly initialised model, side by side on the same batches, on one of two tasks
built from ``pairs`` key-value pairs of random tokens (loss and accuracy on the copied tokens only):

- ``copy``: the ``2 x pairs`` tokens written twice, in the same order; a head that attends a fixed
  distance back (``2 x pairs - 1`` tokens, learnable from the positions alone) solves it;
- ``recall``: the pairs, then every key again in a random order, each followed by its value (the
  retrieval curriculum's first stage without the text): no fixed distance finds the value, only an
  induction circuit (find the earlier occurrence of the current key, copy the token after it).

The default arms ask why a LaCT at the shipped size (d_model 256) learns the curriculum's pairs so
late: LaCT as lact_llm initialises it, the same LaCT with ``ttt_scale_zero_init`` (its fast-weight
branch silent at the start), and DeltaNet for scale. Each arm is a model: ``arch`` (``delta_net``,
``gated_deltanet``, ``lact``) and config overrides on ``preset``.

Writes ``runs/bench/copy.json`` and prints loss / accuracy by step, one column per arm.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from refine_lm.config import load_config
from refine_lm.models.registry import build_model


def _default_arms() -> list[dict[str, Any]]:
    return [
        {"name": "lact", "arch": "lact"},
        {"name": "lact-zero-scale", "arch": "lact", "config": {"ttt_scale_zero_init": True}},
        {"name": "delta_net", "arch": "delta_net"},
    ]


@dataclass
class BenchCopyConfig:
    arms: list[dict[str, Any]] = field(default_factory=_default_arms)  # {name, arch, config: {overrides}}
    preset: str = "small"
    num_hidden_layers: int = 2
    task: str = "copy"  # copy (the tokens again, in order) or recall (the keys again, shuffled)
    pairs: int = 12  # key-value pairs: 4 x pairs tokens a sequence
    batch_size: int = 32
    steps: int = 150
    lr: float = 3e-3  # AdamW, constant
    log_every: int = 25
    seed: int = 0
    threads: int = 1
    output: str = "runs/bench/copy.json"


def _check(cfg: BenchCopyConfig) -> None:
    if cfg.task not in ("copy", "recall"):
        raise ValueError(f"task must be copy or recall, got {cfg.task!r}")
    for i, arm in enumerate(cfg.arms):
        unknown = set(arm) - {"name", "arch", "config"}
        if unknown or "arch" not in arm:
            raise ValueError(f"arms[{i}]: needs 'arch' (and may have 'name', 'config'), got keys {sorted(arm)}")


def train_arm(arm: dict[str, Any], cfg: BenchCopyConfig) -> list[dict[str, float]]:
    overrides = {"num_hidden_layers": cfg.num_hidden_layers, **arm.get("config", {})}
    model = build_model(arm["arch"], cfg.preset, seed=cfg.seed, **overrides)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    batches = torch.Generator().manual_seed(cfg.seed + 1)  # the same batches for every arm
    vocab, n, rows = model.config.vocab_size, cfg.pairs, torch.arange(cfg.batch_size)[:, None]
    log, started = [], time.perf_counter()
    for step in range(cfg.steps + 1):
        keys = torch.rand(cfg.batch_size, vocab - 2, generator=batches).argsort(-1)[:, :n] + 2  # distinct keys
        values = torch.randint(2, vocab, (cfg.batch_size, n), generator=batches)
        order = torch.rand(cfg.batch_size, n, generator=batches).argsort(-1)
        pairs = torch.stack([keys, values], -1).flatten(1)
        if cfg.task == "copy":  # every token of the repeat but its first is predictable
            ids = torch.cat([pairs, pairs], 1)
            logits, targets = model(input_ids=ids).logits[:, 2 * n : -1], ids[:, 2 * n + 1 :]
        else:  # at each queried key: its value is next
            ids = torch.cat([pairs, torch.stack([keys[rows, order], values[rows, order]], -1).flatten(1)], 1)
            logits, targets = model(input_ids=ids).logits[:, 2 * n :: 2], ids[:, 2 * n + 1 :: 2]
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        if step % cfg.log_every == 0 or step == cfg.steps:
            accuracy = (logits.argmax(-1) == targets).float().mean().item()
            log.append({"step": step, "loss": loss.item(), "acc": accuracy, "seconds": time.perf_counter() - started})
        if step < cfg.steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return log


def main(config_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    cfg = load_config(BenchCopyConfig, config_path, overrides)
    _check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    names = [arm.get("name", arm["arch"]) for arm in cfg.arms]
    logs = {name: train_arm(arm, cfg) for name, arm in zip(names, cfg.arms)}
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps({"settings": asdict(cfg), "logs": logs}, indent=2))
    print(f"task {cfg.task}: {cfg.pairs} pairs of random tokens, batch {cfg.batch_size}, preset {cfg.preset}, "
          f"{cfg.num_hidden_layers} layers, AdamW {cfg.lr:g}; loss / accuracy on the copied tokens")  # fmt: skip
    print("| step | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for i, record in enumerate(logs[names[0]]):
        cells = [f"{logs[n][i]['loss']:.3f} / {100 * logs[n][i]['acc']:.1f}%" for n in names]
        print(f"| {record['step']} | " + " | ".join(cells) + " |")
    print("seconds: " + ", ".join(f"{n} {logs[n][-1]['seconds']:.0f}" for n in names))
    return {"settings": asdict(cfg), "logs": logs}


if __name__ == "__main__":
    main(None, sys.argv[1:])
