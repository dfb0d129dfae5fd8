"""DeltaNet causal LM: configuration and model classes (flash-linear-attention compatible)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..layers.delta_net import DeltaNet
from .base import FastWeightConfig, FastWeightForCausalLM, FastWeightModel

# settings (and defaults) fla's DeltaNet and Gated DeltaNet configs share
FLA_SHARED_FIELDS: dict[str, Any] = dict(
    attn_mode="chunk",
    max_position_embeddings=2048,
    hidden_ratio=4,
    intermediate_size=None,
    hidden_act="swish",
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
    attnres_block_size=None,
)


class DeltaNetConfig(FastWeightConfig):
    """Field names and defaults as ``fla.models.DeltaNetConfig`` (the defaults are the 1.3B model).

    Fields that only choose fla's CUDA kernels (``attn_mode``, ``fuse_*``, ``use_l2warp``) are kept
    so checkpoints round-trip, and do not change the computation.
    """

    model_type = "delta_net"
    fields: ClassVar[dict[str, Any]] = FLA_SHARED_FIELDS | dict(
        hidden_size=2048,
        expand_k=1.0,
        expand_v=1.0,
        use_gate=False,
        use_short_conv=True,
        conv_size=4,
        use_beta=True,
        use_output_norm=True,
        num_heads=16,
        qk_norm="l2",
        qk_activation="silu",
        allow_neg_eigval=False,
        num_hidden_layers=24,
    )

    def __init__(self, **kwargs):  # its own __init__, so transformers does not generate one
        super().__init__(**kwargs)


class DeltaNetModel(FastWeightModel):
    config_class = DeltaNetConfig
    mixer_class = DeltaNet


class DeltaNetForCausalLM(FastWeightForCausalLM):
    config_class = DeltaNetConfig
    mixer_class = DeltaNet
    model_class = DeltaNetModel
