"""REFINE step cost: ``refine-lm bench refine [key=value ...]``.

Measured side by side in one run, per sequence length: one optimiser step of
- SFT (next-token prediction only: forward + backward over the batch),
- REFINE with cached states (ours: no-grad read with snapshots, batched rollouts, one grad pass),
- REFINE with ``rollout_mode: reprefill`` (every rollout re-reads its prefix: to sample, to score
  the old policy and for the gradient — the public implementation's cost model), two ways:
  *one pass* reads all c * n rollouts in one batch padded to the longest prefix (the reference's
  "full-length forwards"; its activations outgrow 24 GiB at 16K, so it stops at
  ``reprefill_one_pass_max_len``), *grouped* reads ``reprefill_rows_per_pass`` rollouts at a time,
  each group trimmed to its own longest prefix, with activations recomputed in the backward pass,
and the peak tensor memory of each step (``refine_lm.memory``).

Targets (L = 4096, c = 8, k = 5, n = 1): REFINE <= 2.0x SFT; reprefill / REFINE >= 5x.
Writes ``runs/bench/refine.json`` and prints two markdown tables (step time, peak memory).
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
from refine_lm.ops.dtypes import resolve_precision
from refine_lm.optim import OptimConfig, build_optimizer
from refine_lm.refine.ntp import NextTokenObjective
from refine_lm.refine.objective import RefineConfig, RefineObjective
from refine_lm.step_random import StepRandom


@dataclass
class BenchRefineConfig:
    model: str = "random:delta_net:small"  # a checkpoint directory or random:<arch>[:<preset>]
    lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384])
    batch_size: int = 1
    num_chunks: int = 8
    rollout_len: int = 5
    rollouts_per_position: int = 1
    repeats: int = 3  # timed steps per method and length (median), after one warm-up step
    reprefill_max_len: int = 16384  # skip the (slow) re-prefill baselines above this length
    reprefill_one_pass_max_len: int = 4096  # the one-pass baseline up to this length (16K x 8 rollouts > 24 GiB)
    reprefill_rows_per_pass: int = 4  # rollouts per forward of the grouped baseline
    memory: bool = True
    device: str = "cpu"  # or cuda (peak memory then from torch.cuda.max_memory_allocated)
    precision: str = "auto"  # auto | fp32 | bf16: autocast of every step (auto: bf16 where it is fast)
    backend: str = "chunk"  # the delta rule's recurrence: chunk (torch) or fla (the Triton kernels)
    seed: int = 0
    output: str = "runs/bench/refine.json"


def one_step(model, objective, optimizer, batch: torch.Tensor, rng: StepRandom, dtype: torch.dtype) -> None:
    """The work of one training step, without the loop's logging and checkpointing."""
    with torch.autocast(batch.device.type, dtype=dtype, enabled=dtype != torch.float32):
        for micro_batches in objective.updates(model, batch, rng):
            optimizer.zero_grad(set_to_none=True)
            for micro in micro_batches:
                loss, _ = objective.loss(model, micro)
                loss.backward()
            optimizer.step()


def measure(cfg: BenchRefineConfig, model, objective, batch: torch.Tensor) -> dict:
    optimizer = build_optimizer(model, OptimConfig(lr=1e-6))
    dtype = torch.bfloat16 if resolve_precision(cfg.precision, cfg.device) == "bf16" else torch.float32
    times = []
    for i in range(cfg.repeats + 1):
        start = time.perf_counter()
        one_step(model, objective, optimizer, batch, StepRandom(cfg.seed, i), dtype)
        if batch.is_cuda:
            torch.cuda.synchronize(batch.device)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    result = {"seconds": statistics.median(times)}
    if cfg.memory:
        step = lambda: one_step(model, objective, optimizer, batch, StepRandom(cfg.seed, 99), dtype)
        peak, _ = peak_memory_bytes(step, batch.device)
        result["peak_mib"] = peak / 2**20
    return result


def main(config_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    cfg = load_config(BenchRefineConfig, config_path, overrides)
    model = resolve_model(cfg.model, cfg.seed).to(cfg.device).set_backend(cfg.backend)
    refine = dict(num_chunks=cfg.num_chunks, rollout_len=cfg.rollout_len, rollouts_per_position=cfg.rollouts_per_position)
    results = {}
    for length in cfg.lengths:
        batch = torch.randint(
            0, model.config.vocab_size, (cfg.batch_size, length), generator=torch.Generator().manual_seed(length)
        ).to(cfg.device)
        row = {}
        print(f"[L={length}] SFT ...", flush=True)
        row["sft"] = measure(cfg, model, NextTokenObjective(cfg.batch_size), batch)
        print(f"[L={length}] REFINE (cached states) ...", flush=True)
        cached = RefineObjective(RefineConfig(**refine, rollout_mode="cached"), cfg.batch_size)
        row["refine"] = measure(cfg, model, cached, batch)
        for name, rows_per_pass, max_len in (
            ("reprefill_one_pass", 0, min(cfg.reprefill_max_len, cfg.reprefill_one_pass_max_len)),
            ("reprefill_grouped", cfg.reprefill_rows_per_pass, cfg.reprefill_max_len),
        ):
            if length <= max_len:
                print(f"[L={length}] REFINE ({name}) ...", flush=True)
                reprefill = RefineConfig(**refine, rollout_mode="reprefill", reprefill_rows_per_pass=rows_per_pass)
                row[name] = measure(cfg, model, RefineObjective(reprefill, cfg.batch_size), batch)
                row[f"{name}_over_refine"] = row[name]["seconds"] / row["refine"]["seconds"]
        row["refine_over_sft"] = row["refine"]["seconds"] / row["sft"]["seconds"]
        if cfg.memory:
            row["memory_refine_over_sft"] = row["refine"]["peak_mib"] / row["sft"]["peak_mib"]
        results[length] = row
        table = report(cfg, model, results)
        print("\n" + table + "\n", flush=True)
        # written after every length: a long run that is stopped keeps the rows it finished
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"config": asdict(cfg), "results": results, "table": table}, indent=2))
    print(f"wrote {out}")
    return results


def report(cfg: BenchRefineConfig, model, results: dict) -> str:
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    groups = f"groups of {cfg.reprefill_rows_per_pass}"
    lines = [
        f"model {cfg.model} ({model.config.model_type}, {n_params:.1f}M params), batch {cfg.batch_size}, "
        f"c={cfg.num_chunks}, k={cfg.rollout_len}, n={cfg.rollouts_per_position}, "
        f"{cfg.device} ({torch.get_num_threads()} threads), precision {cfg.precision}, backend {cfg.backend}",
        "",
        f"| L | SFT step | REFINE step | reprefill step (one pass) | reprefill step ({groups}) | REFINE / SFT "
        "| reprefill / REFINE (one pass) | reprefill / REFINE (grouped) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict, method: str, key: str, fmt: str) -> str:
        return fmt.format(r[method][key]) if key in r.get(method, {}) else "—"

    def ratio(r: dict, key: str, fmt: str = "**{:.1f}x**") -> str:
        return fmt.format(r[key]) if key in r else "—"

    for L, r in results.items():
        seconds = [cell(r, m, "seconds", "{:.2f} s") for m in ("sft", "refine", "reprefill_one_pass", "reprefill_grouped")]
        ratios = [ratio(r, "refine_over_sft", "**{:.2f}x**"), ratio(r, "reprefill_one_pass_over_refine"),
                  ratio(r, "reprefill_grouped_over_refine")]  # fmt: skip
        lines.append(f"| {L} | " + " | ".join(seconds + ratios) + " |")
    if cfg.memory:
        lines += [
            "",
            f"| L | peak mem SFT | peak mem REFINE | REFINE / SFT | peak mem reprefill (one pass) "
            f"| peak mem reprefill ({groups}) |",
            "|---|---|---|---|---|---|",
        ]
        for L, r in results.items():
            mib = [cell(r, m, "peak_mib", "{:,.0f} MiB") for m in ("sft", "refine", "reprefill_one_pass", "reprefill_grouped")]
            lines.append(
                f"| {L} | {mib[0]} | {mib[1]} | {ratio(r, 'memory_refine_over_sft', '**{:.2f}x**')} | {mib[2]} | {mib[3]} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main(None, sys.argv[1:])
