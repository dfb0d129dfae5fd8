"""Architectures by name, small presets, and loading of checkpoint directories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from .base import FastWeightConfig, FastWeightForCausalLM
from .delta_net import DeltaNetConfig, DeltaNetForCausalLM
from .gated_deltanet import GatedDeltaNetConfig, GatedDeltaNetForCausalLM
from .lact import LACT_760M, LaCTConfig, LaCTForCausalLM

ARCHITECTURES: dict[str, tuple[type[FastWeightConfig], type[FastWeightForCausalLM]]] = {
    "delta_net": (DeltaNetConfig, DeltaNetForCausalLM),
    "gated_deltanet": (GatedDeltaNetConfig, GatedDeltaNetForCausalLM),
    "lact": (LaCTConfig, LaCTForCausalLM),  # model_type "lact_swiglu"
}

# LaCT presets follow the 760M recipe (momentum, Muon, rank-32 initial w0/w2, window = chunk) at small sizes;
# tiny uses a window longer than the chunk so that tests tell the two apart, and Muon in the fast-weight branch's
# own precision (not lact_llm's bf16) so that tests' fp64 equalities hold.
_LACT_RECIPE = dict(use_momentum=True, use_muon=True, learnable_ttt_scale=True, rope_theta=1e6, initializer_range=0.02)

# Presets: "tiny" for tests and the demo, "small" for benchmarks (4 layers, d_model 256, 4 heads, vocab 8192),
# "760m" the paper's LaCT language model (LaCT only), "340m" / "1.3b" fla's DeltaNet and Gated DeltaNet shapes.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "delta_net": dict(hidden_size=64, num_heads=4, num_hidden_layers=2, vocab_size=512),
        "gated_deltanet": dict(hidden_size=64, num_heads=2, head_dim=16, expand_v=2, num_hidden_layers=2, vocab_size=512),
        "lact": dict(hidden_size=64, num_attn_heads=4, num_lact_heads=2, num_hidden_layers=2, vocab_size=512)
        | dict(lact_chunk_size=8, window_size=12, w0_w2_low_rank=4, newton_schulz_dtype="float32", **_LACT_RECIPE),
    },
    "small": {
        "delta_net": dict(hidden_size=256, num_heads=4, num_hidden_layers=4, vocab_size=8192),
        "gated_deltanet": dict(hidden_size=256, num_heads=4, head_dim=64, expand_v=1, num_hidden_layers=4, vocab_size=8192),
        "lact": dict(hidden_size=256, num_attn_heads=4, num_lact_heads=4, num_hidden_layers=4, vocab_size=8192)
        | dict(lact_chunk_size=256, window_size=256, w0_w2_low_rank=32, **_LACT_RECIPE),
    },
    "760m": {"lact": LACT_760M},
    # the shapes of flash-linear-attention's 340M and 1.3B models (randomly initialised, for GPU benchmarks)
    "340m": {
        "delta_net": dict(hidden_size=1024, num_heads=8, num_hidden_layers=24, vocab_size=32000),
        "gated_deltanet": dict(hidden_size=1024, num_heads=4, head_dim=256, num_hidden_layers=24, vocab_size=32000),
    },
    "1.3b": {
        "delta_net": dict(hidden_size=2048, num_heads=16, num_hidden_layers=24, vocab_size=32000),
        "gated_deltanet": dict(hidden_size=2048, num_heads=6, head_dim=256, num_hidden_layers=21, vocab_size=32000),
    },
}


def build_config(arch: str, preset: str | None = None, **overrides: Any) -> PretrainedConfig:
    """A config for ``arch`` (``delta_net``, ``gated_deltanet`` or ``lact``), from a preset plus overrides."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    fields: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        if arch not in PRESETS[preset]:
            raise ValueError(f"preset {preset!r} exists only for {', '.join(PRESETS[preset])}, not {arch!r}")
        fields.update(PRESETS[preset][arch])
    fields.update(overrides)
    config_class, _ = ARCHITECTURES[arch]
    unknown = sorted(set(fields) - set(config_class.fields))
    if unknown:
        known = ", ".join(config_class.fields)
        raise ValueError(f"{arch} has no config setting {', '.join(map(repr, unknown))} (known: {known})")
    return config_class(**fields)


def build_model(arch: str, preset: str | None = None, seed: int | None = None, **overrides: Any) -> FastWeightForCausalLM:
    """A freshly initialised model."""
    if seed is not None:
        torch.manual_seed(seed)
    config = build_config(arch, preset, **overrides)
    return ARCHITECTURES[arch][1](config)


def load_model(
    path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu"
) -> FastWeightForCausalLM:
    """Load a checkpoint directory (ours, flash-linear-attention's or lact_llm's) with the Auto classes."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory: no config.json in it")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}/config.json: not a JSON object ({e})") from None
    known = [config_class.model_type for config_class, _ in ARCHITECTURES.values()]
    if model_type not in known:
        raise ValueError(f"{path}/config.json: model_type {model_type!r} is not one of {', '.join(known)}")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # a field of the wrong type surfaces as a validation error of transformers
        raise ValueError(f"{path}/config.json: {type(e).__name__}: {e}") from None
    weights = [p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin")]
    if not weights:
        raise FileNotFoundError(f"{path}: no weights (model.safetensors) in the model directory")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32, output_loading_info=True)
    except Exception as e:  # a truncated or corrupt file surfaces as whatever its reader raises
        raise ValueError(f"{path}/{weights[0]}: cannot be read ({type(e).__name__}: {e})") from None
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing, unexpected = sorted(set(info["missing_keys"]) - tied), sorted(info["unexpected_keys"])
    mismatched = [str(m) for m in info.get("mismatched_keys", [])]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{path}/{weights[0]}: the weights do not fit the config (missing {missing}, unexpected {unexpected}"
            + (f", wrong shapes {mismatched}" if mismatched else "")
            + "): nothing may be left randomly initialised"
        )
    if not isinstance(model, FastWeightForCausalLM):
        raise TypeError(
            f"{path} loaded as {type(model).__name__}: another library registered {config.model_type!r}; "
            "import refine_lm after it"
        )
    return model.to(device)
