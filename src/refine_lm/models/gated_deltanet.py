"""Gated DeltaNet causal LM: configuration and model classes (flash-linear-attention compatible)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..layers.delta_net import GatedDeltaNet
from .base import FastWeightConfig, FastWeightForCausalLM, FastWeightModel


class GatedDeltaNetConfig(FastWeightConfig):
    """Field names and defaults as ``fla.models.GatedDeltaNetConfig``."""

    model_type = "gated_deltanet"
    fields: ClassVar[dict[str, Any]] = dict(
        attn_mode="chunk",
        hidden_size=2048,
        expand_v=2.0,
        use_gate=True,
        use_short_conv=True,
        allow_neg_eigval=False,
        conv_size=4,
        head_dim=256,
        num_heads=6,
        num_v_heads=None,
        max_position_embeddings=2048,
        hidden_ratio=4,
        intermediate_size=None,
        hidden_act="swish",
        num_hidden_layers=21,
        norm_eps=1e-06,
        attn=None,
        use_cache=True,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        initializer_range=0.02,
        fuse_norm=True,
        fuse_swiglu=True,
        fuse_cross_entropy=True,
        fuse_linear_cross_entropy=False,
        use_l2warp=False,
        vocab_size=32000,
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
