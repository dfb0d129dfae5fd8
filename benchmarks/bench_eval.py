"""Evaluator throughput: ``refine-lm bench eval [key=value ...]``.

Runs the evaluator of ``refine-lm eval`` (prompt encoding, left-padded batches, prefill, recurrent
decoding, decoding of the answers, scoring) on NIAH single-needle prompts of ``length`` tokens and
reports prefill tokens/s (prompt tokens read per second of prefill) and generated tokens/s
(tokens produced per second of decoding), per architecture and batch size.

By default: the "small" preset (random weights) and a throwaway byte-level BPE tokenizer trained on
made-up text, so it runs anywhere with nothing downloaded; ``model=DIR`` measures a real checkpoint
with its own tokenizer instead. A random model never emits a stop token, so every row decodes
``max_new_tokens`` tokens.

Writes ``runs/bench/eval.json`` and prints a markdown table.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from refine_lm.config import load_config
from refine_lm.data.tokenizer import train_tokenizer
from refine_lm.eval.niah import NIAHBuilder, NIAHConfig, score_niah
from refine_lm.eval.runner import Evaluator, Throughput
from refine_lm.eval.synthetic import tokenizer_training_text
from refine_lm.models.registry import build_config, build_model, load_model


@dataclass
class BenchEvalConfig:
    model: str | None = None  # a checkpoint directory with its tokenizer; None: random `archs` at `preset`
    archs: list[str] = field(default_factory=lambda: ["delta_net", "gated_deltanet"])
    preset: str = "small"
    length: int = 4096  # prompt tokens
    examples: int = 8  # prompts per measurement (one NIAH depth each)
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    max_new_tokens: int = 32
    precision: str = "auto"
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    output: str = "runs/bench/eval.json"


def measure(model, tokenizer, cfg: BenchEvalConfig, batch_size: int) -> dict:
    niah = NIAHConfig(depths=[100 * i / max(cfg.examples - 1, 1) for i in range(cfg.examples)], max_new_tokens=cfg.max_new_tokens)
    examples = NIAHBuilder("single", niah, tokenizer, seed=0).examples(cfg.length)
    evaluator = Evaluator(model, tokenizer, batch_size=batch_size, precision=cfg.precision, progress=False)
    evaluator.run(examples[:batch_size], score_niah)  # warm-up
    evaluator.throughput = Throughput()
    records = evaluator.run(examples, score_niah)
    result = evaluator.throughput.as_dict()
    result["mean_prompt_tokens"] = sum(r["prompt_tokens"] for r in records) / len(records)
    return result


def main(config_path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    cfg = load_config(BenchEvalConfig, config_path, overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.model:
        from transformers import AutoTokenizer

        models = {Path(cfg.model).name: lambda: load_model(cfg.model, device=cfg.device)}
        tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    else:
        models = {arch: lambda arch=arch: build_model(arch, cfg.preset, seed=0).to(cfg.device) for arch in cfg.archs}
        vocab_size = min(build_config(arch, cfg.preset).vocab_size for arch in cfg.archs)
        print(f"training a throwaway byte-level BPE tokenizer (vocab {vocab_size}) on made-up text ...", flush=True)
        tokenizer = train_tokenizer(tokenizer_training_text(20000), vocab_size=vocab_size)
    results: dict[str, dict] = {}
    for name, make in models.items():
        model = make().eval()
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, model vocabulary {model.config.vocab_size}")
        results[name] = {}
        for batch_size in cfg.batch_sizes:
            print(f"[{name}] {cfg.examples} prompts of {cfg.length} tokens, batch {batch_size} ...", flush=True)
            results[name][batch_size] = measure(model, tokenizer, cfg, batch_size)
    lines = [
        f"{cfg.model or f'preset {cfg.preset!r} (random weights)'}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {cfg.device}, {cfg.precision}, {platform.machine()}; "
        f"NIAH prompts of {cfg.length} tokens, {cfg.max_new_tokens} new tokens each",
        "",
        "| model | batch | prefill tokens/s | generated tokens/s |",
        "|---|---|---|---|",
    ]
    for name, by_batch in results.items():
        for batch_size, r in by_batch.items():
            lines.append(f"| {name} | {batch_size} | {r['prefill_tokens_per_s']:,.0f} | {r['generated_tokens_per_s']:,.0f} |")
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": asdict(cfg), "results": results, "table": table}, indent=2))
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main(None, sys.argv[1:])
