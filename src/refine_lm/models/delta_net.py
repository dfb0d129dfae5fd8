"""DeltaNet causal LM: configuration and model classes (flash-linear-attention compatible)."""

from __future__ import annotations

from transformers import PretrainedConfig

from ..layers.delta_net import DeltaNet
from .base import FastWeightForCausalLM, FastWeightModel


class DeltaNetConfig(PretrainedConfig):
    """Field names and defaults as ``fla.models.DeltaNetConfig`` (the defaults are the 1.3B model).

    Fields that only choose fla's CUDA kernels (``attn_mode``, ``fuse_*``, ``use_l2warp``) are kept
    so checkpoints round-trip, and do not change the computation.
    """

    model_type = "delta_net"
    keys_to_ignore_at_inference = ["past_key_values"]  # noqa: RUF012 (Hugging Face's attribute)

    def __init__(
        self,
        attn_mode: str = "chunk",
        hidden_size: int = 2048,
        expand_k: float = 1.0,
        expand_v: float = 1.0,
        use_gate: bool = False,
        use_short_conv: bool = True,
        conv_size: int = 4,
        use_beta: bool = True,
        use_output_norm: bool = True,
        num_heads: int = 16,
        qk_norm: str = "l2",
        qk_activation: str = "silu",
        allow_neg_eigval: bool = False,
        max_position_embeddings: int = 2048,
        hidden_ratio: int | None = 4,
        intermediate_size: int | None = None,
        hidden_act: str = "swish",
        num_hidden_layers: int = 24,
        norm_eps: float = 1e-6,
        attn: dict | None = None,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        fuse_norm: bool = True,
        fuse_swiglu: bool = True,
        fuse_cross_entropy: bool = True,
        use_l2warp: bool = False,
        vocab_size: int = 32000,
        **kwargs,
    ):
        self.attn_mode = attn_mode
        self.hidden_size = hidden_size
        self.expand_k = expand_k
        self.expand_v = expand_v
        self.use_gate = use_gate
        self.use_short_conv = use_short_conv
        self.conv_size = conv_size
        self.use_beta = use_beta
        self.use_output_norm = use_output_norm
        self.num_heads = num_heads
        self.qk_norm = qk_norm
        self.qk_activation = qk_activation
        self.allow_neg_eigval = allow_neg_eigval
        self.max_position_embeddings = max_position_embeddings
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.num_hidden_layers = num_hidden_layers
        self.norm_eps = norm_eps
        self.attn = attn
        self.use_cache = use_cache
        self.initializer_range = initializer_range
        self.fuse_norm = fuse_norm
        self.fuse_swiglu = fuse_swiglu
        self.fuse_cross_entropy = fuse_cross_entropy
        self.use_l2warp = use_l2warp
        self.vocab_size = vocab_size
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


class DeltaNetModel(FastWeightModel):
    config_class = DeltaNetConfig
    mixer_class = DeltaNet


class DeltaNetForCausalLM(FastWeightForCausalLM):
    config_class = DeltaNetConfig
    mixer_class = DeltaNet
    model_class = DeltaNetModel
