"""LaCT causal LM: configuration and model classes (compatible with the public ``lact_llm`` checkpoints)."""

from __future__ import annotations

from transformers import PretrainedConfig

from ..layers.lact import LaCT
from .base import FastWeightForCausalLM, FastWeightModel

# The paper's 760M language model (lact_llm's configs/760M_lact_swiglu_nh4_fwlow_rank_momentum_muon.json).
LACT_760M = dict(
    hidden_size=1536,
    num_hidden_layers=24,
    num_attn_heads=24,
    num_lact_heads=4,
    inter_multi=1,
    qkv_bias=False,
    attn_qk_norm=False,
    qkv_silu=True,
    lact_chunk_size=2048,
    window_size=2048,
    use_muon=True,
    lr_dim=1,
    lr_parameterization="mamba",
    learnable_ttt_scale=True,
    w0_w2_low_rank=32,
    fw_init_gain=0.5,
    use_momentum=True,
    rope_theta=1_000_000.0,
    max_position_embeddings=32768,
    initializer_range=0.02,
    norm_eps=1e-6,
    tie_word_embeddings=False,
    vocab_size=32000,
)


class LaCTConfig(PretrainedConfig):
    """Field names, defaults and ``model_type`` as lact_llm's ``LaCTSWIGLUConfig`` (its defaults are not
    the 760M model: that one is :data:`LACT_760M`).

    Attention: ``num_attn_heads`` heads over a ``window_size``-token sliding window, RoPE base
    ``rope_theta``, optional q/k RMSNorm (``attn_qk_norm``) and qkv bias (``qkv_bias``).
    Fast weights: ``num_lact_heads`` SwiGLU memories of size ``hidden_size / num_lact_heads`` (hidden
    ``inter_multi`` times that), updated every ``lact_chunk_size`` tokens with per-token learning rates
    (``lr_parameterization="mamba"``: softplus, ``lr_dim=1``), optional momentum (``use_momentum``) and
    Muon (``use_muon``); initial w0, w2 of low rank plus I/2 when ``w0_w2_low_rank > 0`` (init gain
    ``fw_init_gain``); ``qkv_silu`` applies SiLU to the fast q, k, v; ``ttt_nope`` skips their RoPE;
    ``learnable_ttt_scale`` scales each head's output by ``SiLU(x W)``.

    Kept so configs round-trip, without effect here (as in lact_llm, or kernel choices): ``no_v_silu``,
    ``max_position_embeddings``, ``elementwise_affine``, ``fuse_*``, ``last_layer_fuse_norm``,
    ``use_fused_kernel``, ``fp32_states`` (the fast weights are always kept in >= fp32). Refused with an
    error: ``ttt_prenorm=True``, ``lr_dim != 1``, other ``lr_parameterization`` / ``ttt_loss_type``.
    """

    model_type = "lact_swiglu"
    keys_to_ignore_at_inference = ["past_key_values"]  # noqa: RUF012 (Hugging Face's attribute)

    def __init__(
        self,
        hidden_size: int = 2048,
        num_hidden_layers: int = 24,
        num_attn_heads: int = 32,
        num_lact_heads: int = 4,
        inter_multi: float = 1,
        qkv_bias: bool = False,
        attn_qk_norm: bool = False,
        lact_chunk_size: int = 2048,
        use_muon: bool = False,
        lr_dim: int = 1,
        qkv_silu: bool = True,
        no_v_silu: bool = False,
        lr_parameterization: str = "mamba",
        learnable_ttt_scale: bool = True,
        use_momentum: bool = True,
        ttt_loss_type: str = "dot_product",
        ttt_prenorm: bool = False,
        ttt_nope: bool = False,
        w0_w2_low_rank: int = -1,
        window_size: int = 2048,
        rope_theta: float | None = 10000.0,
        max_position_embeddings: int = 2048,
        hidden_ratio: int | None = 4,
        intermediate_size: int | None = None,
        hidden_act: str = "swish",
        initializer_range: float = 0.006,
        elementwise_affine: bool | None = True,
        norm_eps: float = 1e-6,
        use_cache: bool = True,
        pad_token_id: int | None = None,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        tie_word_embeddings: bool = False,
        fuse_norm: bool = True,
        last_layer_fuse_norm: bool = True,
        fuse_swiglu: bool = True,
        fuse_cross_entropy: bool = True,
        vocab_size: int = 32000,
        fw_init_gain: float = 0.5,
        use_fused_kernel: bool = False,
        fp32_states: bool = False,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attn_heads = num_attn_heads
        self.num_lact_heads = num_lact_heads
        self.inter_multi = inter_multi
        self.qkv_bias = qkv_bias
        self.attn_qk_norm = attn_qk_norm
        self.lact_chunk_size = lact_chunk_size
        self.use_muon = use_muon
        self.lr_dim = lr_dim
        self.qkv_silu = qkv_silu
        self.no_v_silu = no_v_silu
        self.lr_parameterization = lr_parameterization
        self.learnable_ttt_scale = learnable_ttt_scale
        self.use_momentum = use_momentum
        self.ttt_loss_type = ttt_loss_type
        self.ttt_prenorm = ttt_prenorm
        self.ttt_nope = ttt_nope
        self.w0_w2_low_rank = w0_w2_low_rank
        self.window_size = window_size
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        self.hidden_ratio = hidden_ratio
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.initializer_range = initializer_range
        self.elementwise_affine = elementwise_affine
        self.norm_eps = norm_eps
        self.use_cache = use_cache
        self.fuse_norm = fuse_norm
        self.last_layer_fuse_norm = last_layer_fuse_norm
        self.fuse_swiglu = fuse_swiglu
        self.fuse_cross_entropy = fuse_cross_entropy
        self.vocab_size = vocab_size
        self.fw_init_gain = fw_init_gain
        self.use_fused_kernel = use_fused_kernel
        self.fp32_states = fp32_states
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


class LaCTModel(FastWeightModel):
    config_class = LaCTConfig
    mixer_class = LaCT


class LaCTForCausalLM(FastWeightForCausalLM):
    config_class = LaCTConfig
    mixer_class = LaCT
    model_class = LaCTModel
