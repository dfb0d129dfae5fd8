"""LaCT causal LM: configuration and model classes (compatible with the public ``lact_llm`` checkpoints)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..layers.lact import LaCT
from .base import FastWeightConfig, FastWeightForCausalLM, FastWeightModel

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


class LaCTConfig(FastWeightConfig):
    """Field names, defaults and ``model_type`` as lact_llm's ``LaCTSWIGLUConfig`` (its defaults are not
    the 760M model: that one is :data:`LACT_760M`).

    Attention: ``num_attn_heads`` heads over a ``window_size``-token sliding window, RoPE base
    ``rope_theta``, optional q/k RMSNorm (``attn_qk_norm``) and qkv bias (``qkv_bias``).
    Fast weights: ``num_lact_heads`` SwiGLU memories of size ``hidden_size / num_lact_heads`` (hidden
    ``inter_multi`` times that), updated every ``lact_chunk_size`` tokens with per-token learning rates
    (``lr_parameterization="mamba"``: softplus, ``lr_dim=1``), optional momentum (``use_momentum``) and
    Muon (``use_muon``); initial w0, w2 of low rank plus I/2 when ``w0_w2_low_rank > 0`` (init gain
    ``fw_init_gain``); ``qkv_silu`` applies SiLU to the fast q, k, v (``no_v_silu``: not to v);
    ``ttt_nope`` skips their RoPE;
    ``learnable_ttt_scale`` scales each head's output by ``SiLU(x W)``. ``use_fused_kernel`` with
    ``use_muon``: the updates of w0 and w2 are orthogonalised as one stacked matrix (lact_llm's fused
    kernels do so; its unfused path does them apart).

    Added here (not in lact_llm): ``newton_schulz_dtype``, the precision of Muon's Newton-Schulz
    iteration: ``bfloat16`` (the default) is what lact_llm computes, so its checkpoints' outputs match;
    ``float32`` computes it like the rest of the fast-weight branch (fp32, fp64 with fp64 inputs).
    ``ttt_scale_zero_init``: ``ttt_scale_proj`` starts at zero, so the fast-weight branch adds nothing at
    initialisation (SiLU(0) = 0) and opens as it learns; the window attention then finds a copy (induction)
    circuit far sooner (bases/README.md). Off, ``ttt_scale_proj`` is initialised like every Linear, as lact_llm does.
    ``use_short_conv``: a causal depthwise convolution of width ``conv_size`` on the q, k, v projection (as
    DeltaNet's short convolutions), so a token's key and value can carry the tokens just before it and one
    layer can bind a value to the key that precedes it; off (the default) is lact_llm's layer.

    Kept so configs round-trip, without effect here (as in lact_llm, or kernel choices):
    ``max_position_embeddings``, ``elementwise_affine``, ``fuse_*``, ``last_layer_fuse_norm``,
    ``fp32_states`` (the fast weights are always kept in >= fp32). Refused with an
    error: ``ttt_prenorm=True``, ``lr_dim != 1``, other ``lr_parameterization`` / ``ttt_loss_type``.
    """

    model_type = "lact_swiglu"
    fields: ClassVar[dict[str, Any]] = dict(
        hidden_size=2048,
        num_hidden_layers=24,
        num_attn_heads=32,
        num_lact_heads=4,
        inter_multi=1,
        qkv_bias=False,
        attn_qk_norm=False,
        lact_chunk_size=2048,
        use_muon=False,
        lr_dim=1,
        qkv_silu=True,
        no_v_silu=False,
        lr_parameterization="mamba",
        learnable_ttt_scale=True,
        use_momentum=True,
        ttt_loss_type="dot_product",
        ttt_prenorm=False,
        ttt_nope=False,
        w0_w2_low_rank=-1,
        window_size=2048,
        rope_theta=10000.0,
        max_position_embeddings=2048,
        hidden_ratio=4,
        intermediate_size=None,
        hidden_act="swish",
        initializer_range=0.006,
        elementwise_affine=True,
        norm_eps=1e-06,
        use_cache=True,
        pad_token_id=None,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        fuse_norm=True,
        last_layer_fuse_norm=True,
        fuse_swiglu=True,
        fuse_cross_entropy=True,
        vocab_size=32000,
        fw_init_gain=0.5,
        use_fused_kernel=False,
        fp32_states=False,
        newton_schulz_dtype="bfloat16",
        ttt_scale_zero_init=False,
        use_short_conv=False,
        conv_size=4,
    )

    def __init__(self, **kwargs):  # its own __init__, so transformers does not generate one
        super().__init__(**kwargs)


class LaCTModel(FastWeightModel):
    config_class = LaCTConfig
    mixer_class = LaCT


class LaCTForCausalLM(FastWeightForCausalLM):
    config_class = LaCTConfig
    mixer_class = LaCT
    model_class = LaCTModel
