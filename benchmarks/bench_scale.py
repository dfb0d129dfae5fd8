"""Data-parallel training throughput: ``[torchrun --nproc_per_node N -m] refine_lm bench scale [key=value ...]``.

Runs a few steps of mid-training, SFT and REFINE, through the real training loop (``train()``: data
sharded by rank, gradients averaged, rank-0 checkpoint) for every sequence length and kernel backend,
under the strategy (``parallel``) and number of ranks it is launched with. Reports the global tokens/s
of a step (median after the first step) and the peak GPU memory of a rank. Compare launches side by side:
e.g. 1 rank vs 2 ranks, ``parallel=ddp`` vs ``parallel=fsdp``, ``backends=[chunk,auto]``, ``precision=bf16``.
Writes ``runs/bench/scale.json`` (rank 0) and prints a markdown table.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from refine_lm.cli.generate import resolve_model
from refine_lm.config import load_config
from refine_lm.optim import OptimConfig
from refine_lm.ranks import is_main, reduce_metrics, world
from refine_lm.refine.ntp import NextTokenObjective
from refine_lm.refine.objective import RefineConfig, RefineObjective
from refine_lm.train.loop import LoopConfig, train
from refine_lm.train.metrics import read_metrics


@dataclass
class BenchScaleConfig:
    model: str = "random:delta_net:small"  # a checkpoint directory or random:<arch>[:<preset>]
    lengths: list[int] = field(default_factory=lambda: [4096, 16384])
    methods: list[str] = field(default_factory=lambda: ["sft", "refine"])
    backends: list[str] = field(default_factory=lambda: ["chunk"])  # chunk (torch), fla, auto
    batch_size: int = 0  # global sequences per step (0: one per rank)
    steps: int = 3  # timed: all but the first
    parallel: str = "auto"  # auto, none, ddp, fsdp
    precision: str = "auto"  # auto, fp32 or bf16
    device: str = "cpu"
    threads: int = 0
    num_chunks: int = 8
    rollout_len: int = 5
    seed: int = 0
    output: str = "runs/bench/scale.json"


def measure(cfg: BenchScaleConfig, method: str, length: int, backend: str) -> dict:
    rank, ranks = world()
    batch_size = cfg.batch_size or ranks
    model = resolve_model(cfg.model, cfg.seed)
    vocab = model.config.vocab_size

    def batch_at(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed((cfg.seed * 100_003 + step) * 1_009 + rank)
        return torch.randint(0, vocab, (batch_size // ranks, length), generator=generator)

    if method == "refine":
        objective = RefineObjective(RefineConfig(num_chunks=cfg.num_chunks, rollout_len=cfg.rollout_len), batch_size)
    else:
        objective = NextTokenObjective(batch_size)
    loop = LoopConfig(
        steps=cfg.steps,
        batch_size=batch_size,
        precision=cfg.precision,  # type: ignore[arg-type]
        device=cfg.device,
        backend=backend,  # type: ignore[arg-type]
        parallel=cfg.parallel,  # type: ignore[arg-type]
        threads=cfg.threads,
        seed=cfg.seed,
        keep_last=1,
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:  # each rank its own: rank 0 writes the metrics and checkpoint
        train(loop, OptimConfig(lr=1e-6), model, objective, batch_at, out)
        steps = [r for r in read_metrics(Path(out) / "metrics.jsonl") if r.get("split") == "train"] if is_main() else []
    result = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps[1:] or steps)} if steps else {}
    if loop.device.startswith("cuda"):
        peak = reduce_metrics({"peak_mib": torch.cuda.max_memory_allocated() / 2**20}, maxima=("peak_mib",))
        result.update(peak)
    return result


def main(config_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    cfg = load_config(BenchScaleConfig, config_path, overrides)
    rows = []
    for length in cfg.lengths:
        for backend in cfg.backends:
            for method in cfg.methods:
                if is_main():
                    print(f"[L={length} {backend} {method}] ...", flush=True)
                rows.append({"length": length, "backend": backend, "method": method, **measure(cfg, method, length, backend)})
    if not is_main():
        return {}
    _, ranks = world()
    table = report(cfg, ranks, rows)
    print("\n" + table)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": asdict(cfg), "ranks": ranks, "results": rows, "table": table}, indent=2))
    print(f"\nwrote {out}")
    return {"ranks": ranks, "results": rows}


def report(cfg: BenchScaleConfig, ranks: int, rows: list[dict]) -> str:
    lines = [
        f"model {cfg.model}, {ranks} rank(s), parallel={cfg.parallel}, {cfg.precision}, device {cfg.device}, "
        f"global batch {cfg.batch_size or ranks}, {torch.get_num_threads()} threads per rank",
        "",
        "| L | backend | method | tokens/s (all ranks) | peak memory per rank |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        peak = f"{r['peak_mib']:,.0f} MiB" if "peak_mib" in r else "—"
        lines.append(f"| {r['length']} | {r['backend']} | {r['method']} | {r['tokens_per_s']:,.0f} | {peak} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(None, sys.argv[1:])
