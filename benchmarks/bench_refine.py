"""REFINE step cost: ``refine-lm bench refine [key=value ...]``.

Measured side by side in one run, per sequence length: one optimiser step of
- SFT (next-token prediction only: forward + backward over the batch),
- REFINE with cached states (ours: no-grad read with snapshots, batched rollouts, one grad pass),
- REFINE with ``rollout_mode: reprefill`` (every rollout re-reads its prefix: to sample, to score
  the old policy and for the gradient — the public implementation's cost model),
and the peak tensor memory of a REFINE step vs an SFT step (``refine_lm.memory``).

Targets (issue #5, L = 4096, c = 8, k = 5, n = 1): REFINE <= 2.0x SFT; reprefill / REFINE >= 5x.
Writes ``runs/bench/refine.json`` and prints a markdown table.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from refine_lm.cli.generate import resolve_model
from refine_lm.config import load_config
from refine_lm.memory import peak_memory_bytes
from refine_lm.refine.objective import RefineConfig, RefineObjective
from refine_lm.train.loop import StepRandom
from refine_lm.train.ntp import NextTokenObjective
from refine_lm.train.optim import OptimConfig, build_optimizer


@dataclass
class BenchRefineConfig:
    model: str = "random:delta_net:small"  # a checkpoint directory or random:<arch>[:<preset>]
    lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384])
    batch_size: int = 1
    num_chunks: int = 8
    rollout_len: int = 5
    rollouts_per_position: int = 1
    repeats: int = 2  # timed steps per method and length (median), after one warm-up step
    reprefill_max_len: int = 16384  # skip the (slow) re-prefill baseline above this length
    memory: bool = True
    seed: int = 0
    output: str = "runs/bench/refine.json"


def one_step(model, objective, optimizer, batch: torch.Tensor, rng: StepRandom) -> None:
    """The work of one training step, without the loop's logging and checkpointing."""
    for micro_batches in objective.updates(model, batch, rng):
        optimizer.zero_grad(set_to_none=True)
        for micro in micro_batches:
            loss, _ = objective.loss(model, micro)
            loss.backward()
        optimizer.step()


def measure(cfg: BenchRefineConfig, model, objective, batch: torch.Tensor, repeats: int, memory: bool) -> dict:
    optimizer = build_optimizer(model, OptimConfig(lr=1e-6))
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        one_step(model, objective, optimizer, batch, StepRandom(cfg.seed, i))
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(times)}
    if memory:
        peak, _ = peak_memory_bytes(lambda: one_step(model, objective, optimizer, batch, StepRandom(cfg.seed, 99)))
        result["peak_mib"] = peak / 2**20
    return result


def main(config_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    cfg = load_config(BenchRefineConfig, config_path, overrides)
    model = resolve_model(cfg.model, cfg.seed)
    refine = dict(num_chunks=cfg.num_chunks, rollout_len=cfg.rollout_len, rollouts_per_position=cfg.rollouts_per_position)
    results = {}
    for length in cfg.lengths:
        batch = torch.randint(
            0, model.config.vocab_size, (cfg.batch_size, length), generator=torch.Generator().manual_seed(length)
        )
        row = {}
        print(f"[L={length}] SFT ...", flush=True)
        row["sft"] = measure(cfg, model, NextTokenObjective(cfg.batch_size), batch, cfg.repeats, cfg.memory)
        print(f"[L={length}] REFINE (cached states) ...", flush=True)
        cached = RefineObjective(RefineConfig(**refine, rollout_mode="cached"), cfg.batch_size)
        row["refine"] = measure(cfg, model, cached, batch, cfg.repeats, cfg.memory)
        if length <= cfg.reprefill_max_len:
            print(f"[L={length}] REFINE (reprefill) ...", flush=True)
            reprefill = RefineObjective(RefineConfig(**refine, rollout_mode="reprefill"), cfg.batch_size)
            row["reprefill"] = measure(cfg, model, reprefill, batch, 1, False)
            row["reprefill_over_refine"] = row["reprefill"]["seconds"] / row["refine"]["seconds"]
        row["refine_over_sft"] = row["refine"]["seconds"] / row["sft"]["seconds"]
        if cfg.memory:
            row["memory_refine_over_sft"] = row["refine"]["peak_mib"] / row["sft"]["peak_mib"]
        results[length] = row
    table = report(cfg, model, results)
    print("\n" + table)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": asdict(cfg), "results": results, "table": table}, indent=2))
    print(f"\nwrote {out}")
    return results


def report(cfg: BenchRefineConfig, model, results: dict) -> str:
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    lines = [
        f"model {cfg.model} ({model.config.model_type}, {n_params:.1f}M params), batch {cfg.batch_size}, "
        f"c={cfg.num_chunks}, k={cfg.rollout_len}, n={cfg.rollouts_per_position}, {torch.get_num_threads()} threads",
        "",
        "| L | SFT step | REFINE step | reprefill step | REFINE / SFT | reprefill / REFINE | peak mem SFT | peak mem REFINE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for L, r in results.items():
        reprefill = f"{r['reprefill']['seconds']:.2f} s" if "reprefill" in r else "—"
        speedup = f"**{r['reprefill_over_refine']:.1f}x**" if "reprefill" in r else "—"
        mem = (f"{r['sft']['peak_mib']:.0f} MiB", f"{r['refine']['peak_mib']:.0f} MiB") if cfg.memory else ("—", "—")
        lines.append(
            f"| {L} | {r['sft']['seconds']:.2f} s | {r['refine']['seconds']:.2f} s | {reprefill} "
            f"| **{r['refine_over_sft']:.2f}x** | {speedup} | {mem[0]} | {mem[1]} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(None, sys.argv[1:])
