"""Everything GPU-related in one command: ``make gpu-check`` (= ``refine-lm bench gpu [key=value ...]``).

Made to finish within about 8 minutes on one CUDA GPU:

1. the GPU-only tests (``pytest -m gpu``: the fla kernels on CUDA, torchrun with NCCL);
2. ``bench models device=cuda`` (training step, decoding, prefill memory of the small presets);
3. ``bench refine`` on randomly initialised 340M- and 1.3B-shaped DeltaNet and Gated DeltaNet at
   L = 4K and 16K in bf16: SFT step, REFINE step (cached states), the re-prefill baseline (at 4K),
   with backend ``fla`` (the Triton kernels) and ``chunk`` (the torch loop), and peak memory;
4. a LaCT-760M-shaped model: forward + backward at ``lact_length`` tokens and decoding, in bf16.

Prints the ratios next to their targets (REFINE step <= 1.5x an SFT step at 16K; backend fla's REFINE
step >= 3x faster than backend chunk's at 16K) and writes everything into one JSON (``output``).
``device=cpu`` with tiny settings runs the same plumbing on a CPU (the tests do, with backend chunk).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from refine_lm.cli.bench import load_benchmark
from refine_lm.config import load_config
from refine_lm.memory import peak_memory_bytes
from refine_lm.models.registry import build_model

HERE = Path(__file__).resolve().parent


@dataclass
class BenchGPUConfig:
    device: str = "cuda"
    shapes: list[str] = field(default_factory=lambda: ["340m", "1.3b"])  # presets of models/registry.py
    archs: list[str] = field(default_factory=lambda: ["delta_net", "gated_deltanet"])
    lengths: list[int] = field(default_factory=lambda: [4096, 16384])
    backends: list[str] = field(default_factory=lambda: ["fla", "chunk"])
    precision: str = "bf16"
    reprefill_max_len: int = 4096  # the re-prefill baseline (slow by design) only up to this length
    target_length: int = 16384  # where the targets are read
    lact_preset: str = "760m"
    lact_length: int = 4096
    decode_tokens: int = 32
    refine_overrides: list[str] = field(default_factory=list)  # more settings of bench refine (e.g. num_chunks=2)
    tests: bool = True  # run pytest -m gpu first
    models: bool = True  # run bench models on the device
    output: str = "runs/bench/gpu.json"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def lact(cfg: BenchGPUConfig) -> dict:
    """Forward + backward of one sequence and decoding, LaCT at the preset's shape."""
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float32
    model = build_model("lact", cfg.lact_preset, seed=0).to(cfg.device)
    ids = torch.randint(0, model.config.vocab_size, (1, cfg.lact_length), device=cfg.device)

    def train_step() -> None:
        with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
            model(ids, labels=ids, return_logits=False).loss.backward()

    train_step()  # warm-up
    _sync(cfg.device)
    start = time.perf_counter()
    train_step()
    _sync(cfg.device)
    out = {"train_step_seconds": time.perf_counter() - start, "tokens": cfg.lact_length}
    out["train_peak_mib"] = peak_memory_bytes(train_step, ids.device)[0] / 2**20
    model.zero_grad(set_to_none=True)
    with torch.no_grad(), torch.autocast(ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
        state = model(ids, return_logits=False).state
        token = ids[:, -1]
        _sync(cfg.device)
        start = time.perf_counter()
        for _ in range(cfg.decode_tokens):
            hidden, state = model.step(token, state)
            token = model.lm_head(hidden).argmax(-1)
        _sync(cfg.device)
    out["decode_tokens_per_s"] = cfg.decode_tokens / (time.perf_counter() - start)
    return out


def targets(cfg: BenchGPUConfig, refine: dict) -> list[dict]:
    """The two targets, per shape and architecture, at ``target_length``."""
    rows = []
    for key, by_backend in refine.items():
        at = {b: r.get(str(cfg.target_length)) or r.get(cfg.target_length) for b, r in by_backend.items()}
        row = {"model": key}
        if at.get("fla"):
            row["refine_over_sft_fla"] = at["fla"]["refine"]["seconds"] / at["fla"]["sft"]["seconds"]
        if at.get("fla") and at.get("chunk"):
            row["chunk_over_fla_refine"] = at["chunk"]["refine"]["seconds"] / at["fla"]["refine"]["seconds"]
        rows.append(row)
    return rows


def main(config_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    cfg = load_config(BenchGPUConfig, config_path, overrides)
    report: dict = {"config": asdict(cfg), "device": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else "cpu"}
    started = time.perf_counter()
    if cfg.tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "--no-header", "-rs"], cwd=HERE.parent)
        report["gpu_tests_exit_code"] = tests.returncode
    if cfg.models:
        models_json = Path(cfg.output).with_name("gpu_models.json")
        report["models"] = load_benchmark("models").main(None, [f"device={cfg.device}", f"output={models_json}"])
    bench_refine = load_benchmark("refine")
    refine: dict = {}
    for shape in cfg.shapes:
        for arch in cfg.archs:
            for backend in cfg.backends:
                print(f"== {arch} {shape}, backend {backend}", flush=True)
                refine.setdefault(f"{arch}:{shape}", {})[backend] = bench_refine.main(
                    None,
                    [
                        f"model=random:{arch}:{shape}",
                        f"device={cfg.device}",
                        f"lengths={cfg.lengths}",
                        "repeats=1",
                        f"backend={backend}",
                        f"precision={cfg.precision}",
                        f"reprefill_max_len={cfg.reprefill_max_len}",
                        f"output={Path(cfg.output).with_name(f'gpu_refine_{arch}_{shape}_{backend}.json')}",
                        *cfg.refine_overrides,
                    ],
                )
    report["refine"] = refine
    report["targets"] = targets(cfg, refine)
    report["lact"] = lact(cfg)
    report["seconds"] = time.perf_counter() - started
    print("\n| model | REFINE / SFT step, fla (target <= 1.5) | chunk / fla REFINE step (target >= 3) |")
    print("|---|---|---|")
    for row in report["targets"]:
        cells = [f"{row[k]:.2f}x" if k in row else "—" for k in ("refine_over_sft_fla", "chunk_over_fla_refine")]
        print(f"| {row['model']} | " + " | ".join(cells) + " |")
    lact_row = report["lact"]
    print(
        f"\nLaCT {cfg.lact_preset}: train step {lact_row['train_step_seconds']:.2f} s at {cfg.lact_length} tokens "
        f"(peak {lact_row['train_peak_mib']:,.0f} MiB), decoding {lact_row['decode_tokens_per_s']:.1f} tokens/s"
    )
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out} ({report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main(None, sys.argv[1:])
