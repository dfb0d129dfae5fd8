"""Model-core benchmark: ``refine-lm bench models [key=value ...]``.

Measured side by side in one run, on the "small" preset (4 layers, d_model 256, 4 heads, vocab 8192;
LaCT: 4 attention heads and 4 fast-weight heads, chunk 256, window 256, momentum + Muon):

1. training step (forward + backward, NTP loss) at L = 2048: chunkwise vs the naive token-by-token
   recurrence (target: chunkwise >= 4x faster). LaCT's naive path (its decoding step under autograd)
   costs the same per token at any length beyond the window, so it is timed on a shorter sequence
   (``naive_lens``) and the speed-up compares tokens per second;
2. decoding throughput with the recurrent step at batch 1, 16, 64 (for LaCT the decoded tokens cross
   a chunk boundary, so the fast-weight update is part of what is timed);
3. prefill peak tensor memory at 4K vs 64K tokens (target: <= 1.3x): a prefill that keeps only the
   state and the last hidden state reads the input in segments, so it should not grow. Measured with
   :mod:`refine_lm.memory` (tensor storage actually live, as a GPU allocator would count it), not the
   process's resident size, which mostly shows ``malloc``'s caching.

Writes ``runs/bench/models.json`` and prints a markdown table.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from refine_lm.config import load_config
from refine_lm.memory import peak_memory_bytes
from refine_lm.models.registry import build_model


@dataclass
class BenchModelsConfig:
    archs: list[str] = field(default_factory=lambda: ["delta_net", "gated_deltanet", "lact"])
    preset: str = "small"
    train_len: int = 2048
    naive_lens: dict[str, int] = field(default_factory=lambda: {"lact": 512})  # naive step length, where not train_len
    train_batch: int = 1
    chunk_size: int = 64
    decode_batches: list[int] = field(default_factory=lambda: [1, 16, 64])
    decode_tokens: int = 64
    prefill_lengths: list[int] = field(default_factory=lambda: [1024, 4096, 16384, 65536])
    ratio_lengths: list[int] = field(default_factory=lambda: [4096, 65536])  # memory ratio reported: 2nd / 1st
    repeats: int = 3
    threads: int = 0  # 0: torch's default
    device: str = "cpu"  # or cuda (timings synchronised, peak memory from the CUDA allocator)
    output: str = "runs/bench/models.json"  # a PNG of prefill memory vs length is written next to it

    def __post_init__(self) -> None:
        if len(self.ratio_lengths) != 2 or not set(self.ratio_lengths) <= set(self.prefill_lengths):
            raise ValueError("ratio_lengths must be two of prefill_lengths")


def timed(fn, repeats: int, device: str = "cpu") -> float:
    """Median seconds of ``repeats`` calls after one warm-up call (the GPU's work included)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _model(cfg: BenchModelsConfig, arch: str):
    return build_model(arch, cfg.preset, seed=0).to(cfg.device)


def _ids(cfg: BenchModelsConfig, vocab: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0)).to(cfg.device)


def bench_train_step(cfg: BenchModelsConfig, arch: str) -> dict:
    model = _model(cfg, arch)
    ids = _ids(cfg, model.config.vocab_size, cfg.train_batch, cfg.train_len)

    def step(length: int) -> None:
        model.zero_grad(set_to_none=True)
        model(ids[:, :length], labels=ids[:, :length], return_logits=False, return_hidden="none").loss.backward()

    results = {}
    naive_len = min(cfg.train_len, cfg.naive_lens.get(arch, cfg.train_len))
    for backend, repeats, length in (("chunk", cfg.repeats, cfg.train_len), ("naive", 1, naive_len)):
        model.set_backend(backend, cfg.chunk_size)
        seconds = timed(lambda length=length: step(length), repeats, cfg.device)
        results[backend] = {"seconds": seconds, "length": length, "tokens_per_s": cfg.train_batch * length / seconds}
    results["speedup"] = results["chunk"]["tokens_per_s"] / results["naive"]["tokens_per_s"]
    return results


def bench_decode(cfg: BenchModelsConfig, arch: str) -> dict:
    model = _model(cfg, arch).eval()
    results = {}
    # LaCT updates its fast weights every lact_chunk_size tokens: decode across one such boundary
    chunk = getattr(model.config, "lact_chunk_size", None)
    prompt_len = 16 if chunk is None else max(16, chunk - cfg.decode_tokens // 2)
    for batch in cfg.decode_batches:
        prompt = _ids(cfg, model.config.vocab_size, batch, prompt_len)
        with torch.no_grad():
            prefill = model(prompt, return_logits=False, return_hidden="last")

        def decode(prefill=prefill):
            model.generate(state=prefill.state, last_hidden=prefill.last_hidden_state[:, 0], max_new_tokens=cfg.decode_tokens)

        seconds = timed(decode, cfg.repeats, cfg.device)
        results[batch] = {"seconds": seconds, "tokens_per_s": batch * cfg.decode_tokens / seconds}
    return results


def bench_prefill_memory(cfg: BenchModelsConfig, arch: str) -> dict:
    """Peak tensor memory of a no-grad prefill that keeps the state and the last hidden state only."""
    model = _model(cfg, arch).eval()
    model.set_backend("chunk", cfg.chunk_size)
    results = {}
    for length in cfg.prefill_lengths:
        ids = _ids(cfg, model.config.vocab_size, 1, length)
        with torch.no_grad():
            peak, _ = peak_memory_bytes(lambda ids=ids: model(ids, return_logits=False, return_hidden="last"), ids.device)
            start = time.perf_counter()  # timed separately: the CPU tracker slows every op down
            model(ids, return_logits=False, return_hidden="last")
            if cfg.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        results[length] = {"peak_mib": peak / 2**20, "seconds": seconds, "tokens_per_s": length / seconds}
    lo, hi = cfg.ratio_lengths
    results["ratio"] = results[hi]["peak_mib"] / results[lo]["peak_mib"]
    return results


def naive_cell(naive: dict, train_len: int) -> str:
    if naive["length"] == train_len:
        return f"{naive['seconds']:.2f} s"
    return f"{naive['seconds']:.2f} s at L={naive['length']} ({naive['tokens_per_s']:,.0f} tok/s)"


def report(cfg: BenchModelsConfig, results: dict) -> str:
    lines = [
        f"preset {cfg.preset!r}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}",
        "",
        f"| arch | fwd+bwd L={cfg.train_len} chunk | naive | chunk speed-up | "
        + " | ".join(f"decode b={b}" for b in cfg.decode_batches)
        + f" | prefill {cfg.ratio_lengths[0]} peak | prefill {cfg.ratio_lengths[1]} peak | memory ratio |",
        "|---" * (5 + len(cfg.decode_batches) + 2) + "|",
    ]
    lo, hi = cfg.ratio_lengths
    for arch, r in results.items():
        t, d, m = r["train"], r["decode"], r["prefill"]
        lines.append(
            f"| {arch} | {t['chunk']['seconds']:.2f} s ({t['chunk']['tokens_per_s']:,.0f} tok/s) "
            f"| {naive_cell(t['naive'], cfg.train_len)} | **{t['speedup']:.1f}x** | "
            + " | ".join(f"{d[b]['tokens_per_s']:,.0f} tok/s" for b in cfg.decode_batches)
            + f" | {m[lo]['peak_mib']:.0f} MiB | {m[hi]['peak_mib']:.0f} MiB ({m[hi]['tokens_per_s']:,.0f} tok/s) "
            f"| **{m['ratio']:.2f}x** |"
        )
    return "\n".join(lines)


def plot(cfg: BenchModelsConfig, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, speed) = plt.subplots(1, 2, figsize=(10, 3.6))
    for arch, r in results.items():
        lengths = cfg.prefill_lengths
        mem.plot(lengths, [r["prefill"][n]["peak_mib"] for n in lengths], marker="o", label=arch)
        speed.plot(lengths, [r["prefill"][n]["tokens_per_s"] for n in lengths], marker="o", label=arch)
    for ax, title, unit in ((mem, "prefill peak tensor memory", "MiB"), (speed, "prefill throughput", "tokens / s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{cfg.preset} preset, {torch.get_num_threads()} CPU threads, segments of 4096 tokens", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(config_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    cfg = load_config(BenchModelsConfig, config_path, overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    results = {}
    for arch in cfg.archs:
        print(f"[{arch}] training step: chunkwise vs naive at L={cfg.train_len} ...", flush=True)
        train = bench_train_step(cfg, arch)
        print(f"[{arch}] decoding at batch {cfg.decode_batches} ...", flush=True)
        decode = bench_decode(cfg, arch)
        print(f"[{arch}] prefill peak memory at {cfg.prefill_lengths} ...", flush=True)
        prefill = bench_prefill_memory(cfg, arch)
        results[arch] = {"train": train, "decode": decode, "prefill": prefill}
    table = report(cfg, results)
    print("\n" + table)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": asdict(cfg), "results": results, "table": table}, indent=2, default=str))
    plot(cfg, results, out.with_suffix(".png"))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return results


if __name__ == "__main__":
    main(None, sys.argv[1:])
