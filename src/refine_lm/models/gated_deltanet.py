"""Gated DeltaNet causal LM: configuration and model classes (flash-linear-attention compatible)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..layers.delta_net import GatedDeltaNet
from .base import FastWeightConfig, FastWeightForCausalLM, FastWeightModel
from .delta_net import FLA_SHARED_FIELDS


class GatedDeltaNetConfig(FastWeightConfig):
    """Field names and defaults as ``fla.models.GatedDeltaNetConfig``."""

    model_type = "gated_deltanet"
    fields: ClassVar[dict[str, Any]] = FLA_SHARED_FIELDS | dict(
        hidden_size=2048,
        expand_v=2.0,
        use_gate=True,
        use_short_conv=True,
        allow_neg_eigval=False,
        conv_size=4,
        head_dim=256,
        num_heads=6,
        num_v_heads=None,
        num_hidden_layers=21,
        output_gate_activation="swish",
        # not in fla's config (which fixes them): the range of the gate's initial time steps dt, whose product
        # with A ~ U(0, 16) is each head's initial forgetting rate per token (Mamba's initialisation)
        time_step_min=1e-3,
        time_step_max=0.1,
    )

    def __init__(self, **kwargs):  # its own __init__, so transformers does not generate one
        super().__init__(**kwargs)


class GatedDeltaNetModel(FastWeightModel):
    config_class = GatedDeltaNetConfig
    mixer_class = GatedDeltaNet


class GatedDeltaNetForCausalLM(FastWeightForCausalLM):
    config_class = GatedDeltaNetConfig
    mixer_class = GatedDeltaNet
    model_class = GatedDeltaNetModel
