"""``refine-lm generate``: load (or build) a model and sample continuations with the recurrent decoder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from ..config import ConfigError, load_config
from ..data.tokenizer import check_vocabulary, load_tokenizer
from ..models.registry import ARCHITECTURES, PRESETS, build_model, load_model
from ..ops.dtypes import Precision, autocast, resolve_precision


@dataclass
class GenerateConfig:
    """Settings of ``refine-lm generate``.

    model: a checkpoint directory, or ``random:<arch>[:<preset>]`` (e.g. ``random:delta_net:tiny``)
        for a freshly initialised model.
    prompt: text to continue (tokenised with the checkpoint's tokenizer; as UTF-8 bytes for a
        ``random:`` model).
    max_new_tokens: tokens to generate per sample.
    num_samples: continuations generated together, as one batch.
    do_sample / temperature / top_p / top_k: sampling (greedy when do_sample is false).
    seed: seeds model initialisation (random models) and sampling.
    backend: how the prompt is read: chunk, naive, fla or auto.
    precision: auto (bf16 where the hardware runs it fast, else fp32), fp32, or bf16 autocast for projections
        and MLPs (the recurrence stays fp32).
    device: cpu or cuda.
    save_to: if set, the model is written there as a Hugging Face directory first.
    """

    model: str = "random:delta_net:tiny"
    prompt: str = "The"
    max_new_tokens: int = 48
    num_samples: int = 1
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    backend: Literal["chunk", "naive", "fla", "auto"] = "chunk"
    precision: Precision = "auto"
    device: str = "cpu"
    save_to: str | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.num_samples < 1:
            raise ValueError("max_new_tokens and num_samples must be >= 1")


CONFIGS = {"": GenerateConfig}


class ByteTokenizer:
    """UTF-8 bytes as token ids, for models that come without a tokenizer."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def resolve_model(spec: str, seed: int):
    """A model from a directory or a ``random:<arch>[:<preset>]`` spec."""
    if spec.startswith("random:"):
        _, arch, *rest = spec.split(":")
        preset = rest[0] if rest else "tiny"
        if arch not in ARCHITECTURES or preset not in PRESETS:
            raise ConfigError(
                f"model {spec!r}: expected random:<arch>[:<preset>] "
                f"with arch in {list(ARCHITECTURES)} and preset in {list(PRESETS)}"
            )
        return build_model(arch, preset, seed=seed)
    return load_model(spec)


def resolve_tokenizer(spec: str, vocab_size: int):
    """The checkpoint's tokenizer; UTF-8 bytes only for a ``random:`` model, which has none."""
    if spec.startswith("random:"):
        if vocab_size < 256:
            raise ConfigError(f"model {spec!r} has a vocabulary of {vocab_size} < 256: cannot encode text as bytes")
        return ByteTokenizer()
    tokenizer = load_tokenizer(spec)
    check_vocabulary(tokenizer, vocab_size, spec)
    return tokenizer


def run(args) -> None:
    cfg = load_config(GenerateConfig, args.config, args.overrides)
    torch.manual_seed(cfg.seed)
    model = resolve_model(cfg.model, cfg.seed).to(cfg.device).eval()
    model.set_backend(cfg.backend)
    tokenizer = resolve_tokenizer(cfg.model, model.config.vocab_size)
    if cfg.save_to:
        model.save_pretrained(cfg.save_to)
        print(f"saved model to {cfg.save_to}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {cfg.model} ({model.config.model_type}, {n_params / 1e6:.2f}M parameters, backend {cfg.backend})")

    ids = torch.tensor([tokenizer.encode(cfg.prompt)] * cfg.num_samples, device=cfg.device)
    if ids.shape[1] == 0:
        raise ConfigError("prompt is empty")
    precision = resolve_precision(cfg.precision, cfg.device)
    generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    with autocast(precision, cfg.device), torch.no_grad():
        start = time.perf_counter()
        prefill = model(ids, return_logits=False, return_hidden="last")
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(
            state=prefill.state,
            last_hidden=prefill.last_hidden_state[:, 0],
            max_new_tokens=cfg.max_new_tokens,
            do_sample=cfg.do_sample,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            eos_token_id=getattr(tokenizer, "eos_token_id", None),
            generator=generator,
        )
        decode_s = time.perf_counter() - start
    for i, row in enumerate(out.tokens.tolist()):
        text = tokenizer.decode(row[: int(out.lengths[i])])
        print(f"--- sample {i} ---\n{cfg.prompt}{text}")
    n_prompt, n_new = ids.numel(), int(out.lengths.sum())
    print(
        f"prefill: {n_prompt} tokens in {prefill_s * 1e3:.1f} ms ({n_prompt / prefill_s:,.0f} tok/s); "
        f"decode: {n_new} tokens in {decode_s * 1e3:.1f} ms ({n_new / decode_s:,.0f} tok/s, batch {cfg.num_samples})"
    )
