"""Architectures by name, small presets, and loading of checkpoint directories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from .base import FastWeightForCausalLM
from .delta_net import DeltaNetConfig, DeltaNetForCausalLM
from .gated_deltanet import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

ARCHITECTURES: dict[str, tuple[type[PretrainedConfig], type[FastWeightForCausalLM]]] = {
    "delta_net": (DeltaNetConfig, DeltaNetForCausalLM),
    "gated_deltanet": (GatedDeltaNetConfig, GatedDeltaNetForCausalLM),
}

# Presets: "tiny" for tests and the demo, "small" for benchmarks (4 layers, d_model 256, 4 heads, vocab 8192).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "delta_net": dict(hidden_size=64, num_heads=4, num_hidden_layers=2, vocab_size=512),
        "gated_deltanet": dict(hidden_size=64, num_heads=2, head_dim=16, expand_v=2, num_hidden_layers=2, vocab_size=512),
    },
    "small": {
        "delta_net": dict(hidden_size=256, num_heads=4, num_hidden_layers=4, vocab_size=8192),
        "gated_deltanet": dict(hidden_size=256, num_heads=4, head_dim=64, expand_v=1, num_hidden_layers=4, vocab_size=8192),
    },
}


def build_config(arch: str, preset: str | None = None, **overrides: Any) -> PretrainedConfig:
    """A config for ``arch`` (``delta_net`` or ``gated_deltanet``), from a preset plus overrides."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")
    fields: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
        fields.update(PRESETS[preset][arch])
    fields.update(overrides)
    config_class, _ = ARCHITECTURES[arch]
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
    """Load a checkpoint directory (ours, or flash-linear-attention's) with the Auto classes."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model directory: no config.json in it")
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in ARCHITECTURES:
        raise ValueError(f"{path}/config.json: model_type {config.model_type!r} is not one of {', '.join(ARCHITECTURES)}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if not isinstance(model, FastWeightForCausalLM):
        raise TypeError(
            f"{path} loaded as {type(model).__name__}: another library registered {config.model_type!r}; "
            "import refine_lm after it"
        )
    return model.to(device)
