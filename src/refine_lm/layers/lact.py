"""The LaCT token mixer (Zhang et al., 2025), with the public ``lact_llm`` implementation's parameter names.

One projection gives q, k, v (then, in refine-lm's ``use_short_conv`` variant, a causal depthwise convolution
over the last ``conv_size`` tokens, as DeltaNet has). They feed two branches whose outputs are summed before
``o_proj``:

- sliding-window causal softmax attention (``num_attn_heads`` heads, RoPE at absolute positions,
  each token sees itself and the ``window_size - 1`` tokens before it);
- the fast-weight branch: ``num_lact_heads`` SwiGLU memories read with q and trained on (k, v) once
  per chunk of ``lact_chunk_size`` tokens (see :mod:`refine_lm.ops.lact`). Its q and k are
  rescaled per channel (``qk_scale``, ``qk_offset``), passed through SiLU (``qkv_silu``; v too unless ``no_v_silu``),
  L2-normalised per head and rotated like the attention heads; per-token learning rates are
  ``softplus(lr_proj(x) + softplus^-1(1e-3))``, momentum gates ``sigmoid(momentum_proj(x))``.
  Its output is RMS-normalised per head and scaled by ``SiLU(ttt_scale_proj(x))`` per head.

The memory (:class:`~refine_lm.state.LaCTState`) carries everything decoding needs: the current fast
weights and momentum, the initial row norms, the pending partial chunk and the attention window.
Where this differs from ``lact_llm`` (same parameters, same math otherwise):

- its cached generation keeps only the attention cache and drops the fast weights; here ``step``
  continues exactly where a full forward would be, across chunk boundaries;
- it skips the update after an input's last chunk (nothing reads it); here the state continues, so
  every complete chunk is applied (outputs are unchanged);
- its fast-weight ops run in bf16 under autocast; here the fast-weight branch and the attention run
  in fp32 (fp64 with fp64 inputs), so bf16-trained checkpoints give close but not bit-identical
  outputs. Its Newton-Schulz casts to bf16, which changes outputs far more (logits by 1-2 on tiny
  models): ``newton_schulz_dtype`` (default ``bfloat16``, as lact_llm) chooses, and with
  ``use_fused_kernel`` the update of w0 and w2 is orthogonalised as one matrix, as its fused
  kernels do; attention uses ``scaled_dot_product_attention`` with a band mask
  instead of flash-attn;
- padding: its fast weights read left padding as tokens; here padding never enters the memory;
- ``ttt_prenorm=True`` and ``lr_dim > 1`` are refused rather than approximated.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init

from ..ops.conv import causal_conv1d, causal_conv1d_step, conv_cache_at
from ..ops.dtypes import compute_dtype, upcast
from ..ops.lact import (
    Muon,
    chunk_fast_weights,
    fast_weight_step,
    inverse_softplus,
    rotary,
    rotary_tables,
    window_attention,
    window_attention_step,
)
from ..ops.norm import l2_normalize
from ..state import FastWeightMemory, LaCTState, StateQuery, WindowCache
from .common import OwnInitialisation, Recurrence, RMSNorm, ShortConvolution

BASE_LR = 1e-3  # the learning rate at initialisation (zero lr_proj): softplus(0 + softplus^-1(BASE_LR))
SUBLAYER_NORM_EPS = 1e-5  # q_norm, k_norm and ttt_norm are flash-linear-attention RMSNorms with its default eps


class LowRankFastWeight(nn.Module, OwnInitialisation):
    """An initial fast weight ``w_left @ w_right + I / 2`` per head (lact_llm's ``w0_w2_low_rank``)."""

    def __init__(self, num_heads: int, out_features: int, in_features: int, rank: int, init_gain: float):
        super().__init__()
        self.rank, self.init_gain = rank, init_gain
        self.w_left = nn.Parameter(torch.empty(num_heads, out_features, rank))
        self.w_right = nn.Parameter(torch.empty(num_heads, rank, in_features))
        self.init_own_parameters()

    def init_own_parameters(self) -> None:
        init.normal_(self.w_left, std=self.init_gain / math.sqrt(self.rank))
        init.normal_(self.w_right, std=self.init_gain / math.sqrt(self.w_right.shape[-1]))

    def forward(self) -> Tensor:
        eye = torch.eye(self.w_left.shape[1], self.w_right.shape[2], device=self.w_left.device, dtype=self.w_left.dtype)
        return self.w_left @ self.w_right + 0.5 * eye


class LaCT(nn.Module, OwnInitialisation):
    """LaCT layer: sliding-window attention plus large-chunk test-time-trained SwiGLU fast weights."""

    # a DeltaNet keeps these apart: a warm start from one assembles them (with ``ttt_nope`` its q, k, v then
    # reach the fast weights as DeltaNet's recurrence reads them: SiLU, then L2 norm for q and k)
    fused_parameters: ClassVar[dict[str, tuple[str, ...]]] = {
        "qkv.weight": ("q_proj.weight", "k_proj.weight", "v_proj.weight"),
        "qkv_conv1d.weight": ("q_conv1d.weight", "k_conv1d.weight", "v_conv1d.weight"),
    }

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__()
        _check_config(config)
        D = config.hidden_size
        self.layer_idx = layer_idx
        self.hidden_size = D
        self.num_heads, self.head_dim = config.num_attn_heads, D // config.num_attn_heads
        self.num_fw_heads, self.fw_head_dim = config.num_lact_heads, D // config.num_lact_heads
        self.fw_hidden_dim = int(self.fw_head_dim * config.inter_multi)
        self.chunk_size, self.window_size = config.lact_chunk_size, config.window_size
        self.rope_theta = float(config.rope_theta)
        self.use_momentum = config.use_momentum
        self.muon = None
        if config.use_muon:
            dtype = torch.bfloat16 if config.newton_schulz_dtype == "bfloat16" else None  # None: fp32 (fp64 inputs: fp64)
            self.muon = Muon(dtype, joint_w0_w2=config.use_fused_kernel)
        self.qkv_silu, self.ttt_nope = config.qkv_silu, config.ttt_nope
        self.v_silu = config.qkv_silu and not config.no_v_silu  # lact_llm: no_v_silu overrides qkv_silu for v
        self.attn_qk_norm, self.learnable_ttt_scale = config.attn_qk_norm, config.learnable_ttt_scale
        self.w0_w2_low_rank, self.fw_init_gain = config.w0_w2_low_rank, config.fw_init_gain
        self.ttt_scale_zero_init = config.ttt_scale_zero_init
        H, dk, dh = self.num_fw_heads, self.fw_head_dim, self.fw_hidden_dim

        self.qkv = nn.Linear(D, 3 * D, bias=config.qkv_bias)
        self.conv_size = config.conv_size if config.use_short_conv else 0
        if self.conv_size:
            self.qkv_conv1d = ShortConvolution(3 * D, self.conv_size)
        if self.attn_qk_norm:
            self.q_norm = RMSNorm(D, eps=SUBLAYER_NORM_EPS)
            self.k_norm = RMSNorm(D, eps=SUBLAYER_NORM_EPS)
        self.o_proj = nn.Linear(D, D, bias=False)
        if self.w0_w2_low_rank > 0:
            self.w0 = LowRankFastWeight(H, dh, dk, self.w0_w2_low_rank, self.fw_init_gain)
            self.w2 = LowRankFastWeight(H, dh, dk, self.w0_w2_low_rank, self.fw_init_gain)
        else:
            self.w0 = nn.Parameter(torch.empty(H, dh, dk))
            self.w2 = nn.Parameter(torch.empty(H, dh, dk))
        self.w1 = nn.Parameter(torch.empty(H, dk, dh))
        self.lr_proj = nn.Linear(D, 3 * H)  # per head: the rates of w0, w1, w2
        self.qk_scale = nn.Parameter(torch.empty(D, 2))  # [:, 0] for q, [:, 1] for k
        self.qk_offset = nn.Parameter(torch.empty(D, 2))
        if self.learnable_ttt_scale:
            self.ttt_scale_proj = nn.Linear(D, H)
        self.ttt_norm = RMSNorm(dk, eps=SUBLAYER_NORM_EPS)
        if self.use_momentum:
            self.momentum_proj = nn.Sequential(nn.Linear(D, H), nn.Sigmoid())
        self.init_own_parameters()

    def init_own_parameters(self) -> None:
        """lact_llm's initialisation of what is not a Linear / norm: q/k rescaling and the initial fast weights
        (and, with ``ttt_scale_zero_init``, the fast-weight branch's output scale at zero; with ``use_short_conv``,
        the convolution as the identity)."""
        init.ones_(self.qk_scale)
        init.zeros_(self.qk_offset)
        if self.w0_w2_low_rank <= 0:
            init.normal_(self.w0, std=1 / math.sqrt(self.fw_head_dim))
            init.normal_(self.w2, std=1 / math.sqrt(self.fw_head_dim))
        init.normal_(self.w1, std=1 / math.sqrt(self.fw_hidden_dim))
        if self.conv_size:  # the current token's tap at 1, the others at 0: the variant starts as lact_llm's layer
            identity = torch.zeros_like(self.qkv_conv1d.weight)
            identity[..., -1] = 1.0
            init.copy_(self.qkv_conv1d.weight, identity)
        if self.learnable_ttt_scale and self.ttt_scale_zero_init:  # after the Linear's own init (children first)
            init.zeros_(self.ttt_scale_proj.weight)
            init.zeros_(self.ttt_scale_proj.bias)

    def initial_fast_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        """The learned initial ``(w0, w1, w2)``, ``[H, d_h, d_k]``, ``[H, d_v, d_h]``, ``[H, d_h, d_k]``."""
        if self.w0_w2_low_rank > 0:
            return self.w0(), self.w1, self.w2()
        return self.w0, self.w1, self.w2

    # ----- state ------------------------------------------------------------------------------
    def init_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> LaCTState:
        """The memory before any token: the learned initial fast weights, empty chunk and window.
        (Differentiable in the initial weights, like a forward from no state.)"""
        device = device or self.qkv.weight.device
        B, H, dk, C, n = batch_size, self.num_fw_heads, self.fw_head_dim, self.chunk_size, self.window_size - 1
        weights = [w.to(device=device, dtype=dtype) for w in self.initial_fast_weights()]
        norms = [w.norm(dim=-1, keepdim=True).expand(B, *w.shape[:-1], 1) for w in weights]
        weights = [w.expand(B, *w.shape) for w in weights]
        momentum = [torch.zeros_like(w) for w in weights] if self.use_momentum else [None] * 3
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)
        fast = FastWeightMemory(
            *weights,
            *norms,
            *momentum,
            pending_k=zeros(B, C - 1, H, dk),
            pending_v=zeros(B, C - 1, H, dk),
            pending_lr=zeros(B, C - 1, H, 3),
            pending_gate=zeros(B, C - 1, H) if self.use_momentum else None,
        )
        window = WindowCache(zeros(B, n, self.num_heads, self.head_dim), zeros(B, n, self.num_heads, self.head_dim))
        conv = zeros(B, self.conv_size - 1, 3 * self.hidden_size) if self.conv_size else None
        return LaCTState(fast, window, torch.zeros(B, dtype=torch.long, device=device), conv)

    # ----- shared pieces ----------------------------------------------------------------------
    def _project(self, x: Tensor, qkv: Tensor, positions: Tensor) -> tuple[Tensor, ...]:
        """x ``[B, T, D]`` and its (convolved) ``qkv`` projection at absolute ``positions [B, T]`` -> attention
        q, k, v ``[B, T, A, d]`` (rotated), fast-weight q, k, v ``[B, T, H, d_k]``, learning rates ``[B, T, H, 3]``
        and momentum gates ``[B, T, H]``."""
        q, k, v = qkv.chunk(3, dim=-1)
        if self.attn_qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = upcast(q), upcast(k), upcast(v)
        scale, offset = upcast(self.qk_scale), upcast(self.qk_offset)
        fq, fk, fv = q * scale[:, 0] + offset[:, 0], k * scale[:, 1] + offset[:, 1], v

        attention_heads = lambda t: t.unflatten(-1, (self.num_heads, self.head_dim))
        fw_heads = lambda t: t.unflatten(-1, (self.num_fw_heads, self.fw_head_dim))
        cos, sin = rotary_tables(positions, self.head_dim, self.rope_theta, q.dtype)
        q, k, v = rotary(attention_heads(q), cos, sin), rotary(attention_heads(k), cos, sin), attention_heads(v)
        if self.qkv_silu:
            fq, fk = F.silu(fq), F.silu(fk)
        if self.v_silu:
            fv = F.silu(fv)
        fq, fk = (l2_normalize(fw_heads(t), 1e-5, squared=False) for t in (fq, fk))
        fv = fw_heads(fv)
        if not self.ttt_nope:  # the fast q, k get the attention heads' rotation, head_dim channels at a time
            regroup = lambda t: fw_heads(rotary(attention_heads(t.flatten(-2)), cos, sin).flatten(-2))
            fq, fk = regroup(fq), regroup(fk)
        lr = F.softplus(upcast(self.lr_proj(x)) + inverse_softplus(BASE_LR)).unflatten(-1, (self.num_fw_heads, 3))
        gate = torch.sigmoid(upcast(self.momentum_proj[0](x))) if self.use_momentum else None
        return q, k, v, fq, fk, fv, lr, gate

    def _output(self, x: Tensor, attention: Tensor, fast: Tensor) -> Tensor:
        fast = self.ttt_norm(fast)
        if self.learnable_ttt_scale:
            fast = fast * F.silu(upcast(self.ttt_scale_proj(x)))[..., None]
        return self.o_proj((attention.flatten(-2) + fast.flatten(-2)).to(x.dtype))

    # ----- execution paths --------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        state: LaCTState | None = None,
        query: StateQuery | None = None,
        recurrence: Recurrence = Recurrence(),
    ) -> tuple[Tensor, LaCTState, LaCTState | None]:
        """``x [B, T, D]`` -> ``(y [B, T, D], state after x, states answering `query` or None)``.

        ``recurrence.backend``: ``chunk`` / ``auto`` (chunkwise, the default) or ``naive`` (``step``
        token by token: the reference). LaCT's chunk size is part of the model (``lact_chunk_size``),
        so ``recurrence.chunk_size`` does not apply.
        """
        if state is None:
            state = self.init_state(x.shape[0], x.device, compute_dtype(x))
        backend = recurrence.backend
        if backend == "naive":
            return self._forward_stepwise(x, state, query)
        if backend not in ("chunk", "auto"):
            raise ValueError(f"LaCT runs with the chunk, naive or auto backend (fla has no LaCT kernels), got {backend!r}")
        T = x.shape[1]
        positions = state.position[:, None] + torch.arange(T, device=x.device)
        qkv, padded = self.qkv(x), None
        if self.conv_size:
            qkv, padded = causal_conv1d(qkv, self.qkv_conv1d.weight[:, 0], None, state.conv)
        q, k, v, fq, fk, fv, lr, gate = self._project(x, qkv, positions)
        attention, window, window_at_query = window_attention(q, k, v, state.window, state.position, query=query)
        fast_out, fast, fast_at_query = chunk_fast_weights(
            fq, fk, fv, lr, gate, state.fast, state.position, chunk_size=self.chunk_size, muon=self.muon, query=query
        )
        y = self._output(x, attention, fast_out)
        conv = conv_at_query = None
        if padded is not None:  # a clone: a view would keep the whole padded input alive in the state
            conv = padded[:, padded.shape[1] - (self.conv_size - 1) :].clone()
            if query is not None:
                conv_at_query = conv_cache_at(padded, query.rows, query.lengths, self.conv_size)
        query_state = None
        if query is not None:
            positions_at_query = state.position[query.rows] + query.lengths
            query_state = LaCTState(fast_at_query, window_at_query, positions_at_query, conv_at_query)
        return y, LaCTState(fast, window, state.position + T, conv), query_state

    def step(self, x: Tensor, state: LaCTState) -> tuple[Tensor, LaCTState]:
        """One token for every row: ``x [B, D]`` -> ``(y [B, D], new state)``."""
        qkv, conv = self.qkv(x), None
        if self.conv_size:
            qkv, conv = causal_conv1d_step(qkv, self.qkv_conv1d.weight[:, 0], None, state.conv)
        x = x[:, None]
        q, k, v, fq, fk, fv, lr, gate = self._project(x, qkv[:, None], state.position[:, None])
        attention, window = window_attention_step(q[:, 0], k[:, 0], v[:, 0], state.window, state.position)
        fast_out, fast = fast_weight_step(
            fq[:, 0],
            fk[:, 0],
            fv[:, 0],
            lr[:, 0],
            None if gate is None else gate[:, 0],
            state.fast,
            state.position,
            chunk_size=self.chunk_size,
            muon=self.muon,
        )
        y = self._output(x, attention[:, None], fast_out[:, None])
        return y[:, 0], LaCTState(fast, window, state.position + 1, conv)

    def _forward_stepwise(
        self, x: Tensor, state: LaCTState, query: StateQuery | None
    ) -> tuple[Tensor, LaCTState, LaCTState | None]:
        """The reference path: ``step`` over the tokens, keeping every intermediate state a query asks for."""
        history = [state]
        outputs = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            outputs.append(y)
            if query is not None:
                history.append(state)
        query_state = None
        if query is not None:
            picked = [history[n].index([r]) for r, n in zip(query.rows.tolist(), query.lengths.tolist())]
            query_state = LaCTState.cat(picked) if picked else state.index(query.rows)
        return torch.stack(outputs, dim=1), state, query_state


def _check_config(config) -> None:
    """Refuse lact_llm options this implementation does not compute (instead of silently ignoring them)."""
    D = config.hidden_size
    if D % config.num_attn_heads or D % config.num_lact_heads:
        raise ValueError(f"hidden_size={D} must be divisible by num_attn_heads and num_lact_heads")
    if (D // config.num_attn_heads) % 2:
        raise ValueError(f"the attention head size {D // config.num_attn_heads} must be even (RoPE)")
    if config.window_size is None or config.window_size < 1:
        raise ValueError(f"window_size must be a positive number of tokens, got {config.window_size!r}")
    if config.use_short_conv and config.conv_size < 2:
        raise ValueError(f"conv_size must be >= 2 tokens with use_short_conv, got {config.conv_size}")
    if config.lact_chunk_size < 1:
        raise ValueError(f"lact_chunk_size must be >= 1, got {config.lact_chunk_size}")
    if config.rope_theta is None:
        raise ValueError("rope_theta must be set (LaCT rotates its attention and fast-weight queries and keys)")
    if config.newton_schulz_dtype not in ("bfloat16", "float32"):
        raise ValueError(f"LaCT config newton_schulz_dtype must be 'bfloat16' or 'float32', got {config.newton_schulz_dtype!r}")
    unsupported = {
        "ttt_prenorm": (config.ttt_prenorm, False),
        "lr_dim": (config.lr_dim, 1),
        "lr_parameterization": (str(config.lr_parameterization).lower(), "mamba"),
        "ttt_loss_type": (config.ttt_loss_type, "dot_product"),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise ValueError(f"LaCT config {name}={value!r} is not supported by refine-lm (only {supported!r})")
