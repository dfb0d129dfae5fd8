"""DeltaNet and Gated DeltaNet token mixers (the fast-weight layers), with flash-linear-attention's parameter names.

Both layers read x through q / k / v projections, a causal short convolution and an activation,
then run the (gated) delta rule over heads and project back:

    DeltaNet:        S_t = S_{t-1} + b_t k_t (v_t - S_{t-1}^T k_t)^T              o = RMSNorm(S^T q) W_o
    Gated DeltaNet:  S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T         o = (RMSNorm(S^T q) * SiLU(x W_g)) W_o
                     (sigmoid instead of SiLU with output_gate_activation: sigmoid)
                     a_t = exp(-exp(A_log) * softplus(x W_a + dt_bias))

Every layer offers the three execution paths of :mod:`refine_lm.ops.delta_rule` (chunkwise /
naive over a sequence, :meth:`step` for one token) and carries its memory in a
:class:`~refine_lm.state.DeltaRuleState`.
"""

from __future__ import annotations

import abc
import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import initialization as init

from ..ops.conv import causal_conv1d, causal_conv1d_step, conv_cache_at
from ..ops.delta_rule import chunk_delta_rule, delta_rule_step, naive_delta_rule
from ..ops.dtypes import upcast
from ..ops.fla_backend import fla_delta_rule, fla_unavailable, say_once
from ..ops.norm import l2_normalize
from ..state import DeltaRuleState, StateQuery
from .common import GatedRMSNorm, OwnInitialisation, Recurrence, RMSNorm, ShortConvolution

_QK_ACTIVATIONS = {
    "silu": F.silu,
    "relu": F.relu,
    "elu": lambda x: F.elu(x) + 1.0,
    "identity": lambda x: x,
}


class DeltaRuleMixer(nn.Module, abc.ABC):
    """What DeltaNet and Gated DeltaNet share: projections -> short conv -> heads -> recurrence -> output.

    Subclasses create the parameters and define :meth:`_beta_and_log_decay` (and the q/k activation).
    """

    num_heads: int  # query / key heads
    num_v_heads: int  # value heads (>= num_heads: several value heads may share one key head)
    head_k_dim: int
    head_v_dim: int
    use_short_conv: bool
    conv_size: int
    use_gate: bool
    qk_activation: str = "silu"
    qk_norm: str = "l2"
    output_gate_activation: str = "swish"

    # ----- parameters -------------------------------------------------------------------------
    def _build(self, hidden_size: int, norm_eps: float, conv_bias: bool = False) -> None:
        key_dim, value_dim = self.num_heads * self.head_k_dim, self.num_v_heads * self.head_v_dim
        self.key_dim, self.value_dim = key_dim, value_dim
        self.q_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, key_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, value_dim, bias=False)
        if self.use_short_conv:
            self.q_conv1d = ShortConvolution(key_dim, self.conv_size, bias=conv_bias)
            self.k_conv1d = ShortConvolution(key_dim, self.conv_size, bias=conv_bias)
            self.v_conv1d = ShortConvolution(value_dim, self.conv_size, bias=conv_bias)
        if self.use_gate:
            self.g_proj = nn.Linear(hidden_size, value_dim, bias=False)
            self.o_norm = GatedRMSNorm(self.head_v_dim, eps=norm_eps, activation=self.output_gate_activation)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=norm_eps)
        self.o_proj = nn.Linear(value_dim, hidden_size, bias=False)

    @abc.abstractmethod
    def _beta_and_log_decay(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Writing strength ``[..., num_v_heads]`` in (0, 1] (or (0, 2]) and log-decay (or None)."""

    # ----- state ------------------------------------------------------------------------------
    def init_state(
        self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> DeltaRuleState:
        device = device or self.q_proj.weight.device
        recurrent = torch.zeros(batch_size, self.num_v_heads, self.head_k_dim, self.head_v_dim, device=device, dtype=dtype)
        conv = None
        if self.use_short_conv:
            width = 2 * self.key_dim + self.value_dim
            conv = torch.zeros(batch_size, self.conv_size - 1, width, device=device, dtype=self.q_proj.weight.dtype)
        return DeltaRuleState(recurrent, conv)

    # ----- shared pieces ----------------------------------------------------------------------
    def _conv_params(self) -> tuple[Tensor, Tensor | None]:
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
        weight = torch.cat([c.weight[:, 0, :] for c in convs])
        bias = None if convs[0].bias is None else torch.cat([c.bias for c in convs])
        return weight, bias

    def _project(self, x: Tensor) -> Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)

    def _heads(self, x: Tensor, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        activation = _QK_ACTIVATIONS[self.qk_activation]
        q, k, v = activation(q), activation(k), F.silu(v)
        q, k = (t.unflatten(-1, (self.num_heads, self.head_k_dim)) for t in (q, k))
        v = v.unflatten(-1, (self.num_v_heads, self.head_v_dim))
        if self.qk_norm == "l2":
            q, k = l2_normalize(upcast(q), 1e-6, squared=True), l2_normalize(upcast(k), 1e-6, squared=True)
        else:  # "sum": divided by the L1 norm, floored (fla's sum_norm), so an all-zero q or k stays finite
            q, k = F.normalize(q, p=1, dim=-1, eps=1e-6), F.normalize(k, p=1, dim=-1, eps=1e-6)
        if self.num_v_heads > self.num_heads:
            share = self.num_v_heads // self.num_heads
            q, k = q.repeat_interleave(share, dim=-2), k.repeat_interleave(share, dim=-2)
        beta, log_decay = self._beta_and_log_decay(x)
        return q, k, v, beta, log_decay

    def _output(self, x: Tensor, o: Tensor) -> Tensor:
        o = o.to(x.dtype)
        if self.use_gate:
            o = self.o_norm(o, self.g_proj(x).unflatten(-1, (self.num_v_heads, self.head_v_dim)))
        else:
            o = self.o_norm(o)
        return self.o_proj(o.flatten(-2))

    # ----- execution paths --------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        state: DeltaRuleState | None = None,
        query: StateQuery | None = None,
        recurrence: Recurrence = Recurrence(),
    ) -> tuple[Tensor, DeltaRuleState, DeltaRuleState | None]:
        """``x [B, T, D]`` -> ``(y [B, T, D], state after x, states answering `query` or None)``."""
        qkv = self._project(x)
        padded = None
        if self.use_short_conv:
            weight, bias = self._conv_params()
            qkv, padded = causal_conv1d(qkv, weight, bias, None if state is None else state.conv)
        q, k, v, beta, log_decay = self._heads(x, qkv)
        initial = None if state is None else state.recurrent

        backend = recurrence.backend
        if backend in ("auto", "fla"):
            why = fla_unavailable(q, auto=backend == "auto", gated=log_decay is not None)
            if why is not None and backend == "fla":
                raise RuntimeError(f"backend 'fla' cannot run here: {why}")
            if why is not None:  # expected on a CPU; on a GPU it costs speed, so it is a warning there
                level = logging.WARNING if q.is_cuda else logging.INFO
                say_once(f"backend auto: the torch chunk loop reads the delta rule ({why})", level)
            backend = "chunk" if why else "fla"
        if backend == "chunk":
            o, final, at_query = chunk_delta_rule(
                q, k, v, beta, log_decay, initial_state=initial, query=query, chunk_size=recurrence.chunk_size
            )
        elif backend == "naive":
            o, final, at_query = naive_delta_rule(q, k, v, beta, log_decay, initial_state=initial, query=query)
        elif backend == "fla":
            o, final, at_query = fla_delta_rule(
                q, k, v, beta, log_decay, scale=self.head_k_dim**-0.5, initial_state=initial, query=query
            )
        else:
            raise ValueError(f"unknown recurrence backend {backend!r} (expected chunk, naive, fla or auto)")

        conv_final = conv_at_query = None
        if padded is not None:
            # clone: a view would keep the whole padded input of the segment alive in the state
            conv_final = padded[:, padded.shape[1] - (self.conv_size - 1) :].clone()
            if query is not None:
                conv_at_query = conv_cache_at(padded, query.rows, query.lengths, self.conv_size)
        query_state = None if query is None else DeltaRuleState(at_query, conv_at_query)
        return self._output(x, o), DeltaRuleState(final, conv_final), query_state

    def step(self, x: Tensor, state: DeltaRuleState) -> tuple[Tensor, DeltaRuleState]:
        """One token for every row: ``x [B, D]`` -> ``(y [B, D], new state)``."""
        qkv = self._project(x)
        conv = None
        if self.use_short_conv:
            weight, bias = self._conv_params()
            qkv, conv = causal_conv1d_step(qkv, weight, bias, state.conv)
        q, k, v, beta, log_decay = self._heads(x, qkv)
        o, recurrent = delta_rule_step(q, k, v, beta, log_decay, state.recurrent)
        return self._output(x, o), DeltaRuleState(recurrent, conv)


class DeltaNet(DeltaRuleMixer):
    """DeltaNet (Yang et al., 2024), as flash-linear-attention's ``fla.layers.DeltaNet``."""

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__()
        if config.qk_activation not in _QK_ACTIVATIONS:
            raise ValueError(f"qk_activation must be one of {sorted(_QK_ACTIVATIONS)}, got {config.qk_activation!r}")
        if config.qk_norm not in ("l2", "sum"):
            raise ValueError(f"qk_norm must be 'l2' or 'sum', got {config.qk_norm!r}")
        self.layer_idx = layer_idx
        key_dim, value_dim = config.hidden_size * config.expand_k, config.hidden_size * config.expand_v
        for name, dim in (("expand_k", key_dim), ("expand_v", value_dim)):
            if not math.isclose(dim, round(dim)):
                raise ValueError(f"hidden_size * {name} = {dim} must be an integer")
        # rounded as fla does: 100 * 0.29 is 28.999999999999996, which int() would cut to 28
        key_dim, value_dim = round(key_dim), round(value_dim)
        if key_dim % config.num_heads or value_dim % config.num_heads:
            raise ValueError(f"key dim {key_dim} and value dim {value_dim} must be divisible by num_heads={config.num_heads}")
        self.num_heads = self.num_v_heads = config.num_heads
        self.head_k_dim, self.head_v_dim = key_dim // config.num_heads, value_dim // config.num_heads
        self.use_short_conv, self.conv_size = config.use_short_conv, config.conv_size
        self.use_gate, self.use_beta = config.use_gate, config.use_beta
        self.qk_activation, self.qk_norm = config.qk_activation, config.qk_norm
        self.allow_neg_eigval = getattr(config, "allow_neg_eigval", False)
        self._build(config.hidden_size, config.norm_eps)
        if self.use_beta:
            self.b_proj = nn.Linear(config.hidden_size, self.num_heads, bias=False)

    def _beta_and_log_decay(self, x: Tensor) -> tuple[Tensor, None]:
        if self.use_beta:
            beta = torch.sigmoid(upcast(self.b_proj(x)))
        else:
            beta = upcast(x.new_ones(*x.shape[:-1], self.num_heads))
        return (2 * beta if self.allow_neg_eigval else beta), None


class GatedDeltaNet(DeltaRuleMixer, OwnInitialisation):
    """Gated DeltaNet (Yang et al., 2025), as flash-linear-attention's ``fla.layers.GatedDeltaNet``."""

    def __init__(self, config, layer_idx: int | None = None):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads
        self.num_v_heads = config.num_v_heads or config.num_heads
        if self.num_v_heads % self.num_heads:
            raise ValueError(f"num_v_heads={self.num_v_heads} must be a multiple of num_heads={self.num_heads}")
        self.head_k_dim = config.head_dim
        self.head_v_dim = int(config.head_dim * config.expand_v)
        if not math.isclose(config.head_dim * config.expand_v, self.head_v_dim):
            raise ValueError(f"head_dim * expand_v = {config.head_dim * config.expand_v} must be an integer")
        self.use_short_conv, self.conv_size = config.use_short_conv, config.conv_size
        self.use_gate = config.use_gate
        self.output_gate_activation = config.output_gate_activation
        self.allow_neg_eigval = config.allow_neg_eigval
        self.time_step_range = (getattr(config, "time_step_min", 1e-3), getattr(config, "time_step_max", 0.1))
        if not 0 < self.time_step_range[0] <= self.time_step_range[1]:
            raise ValueError(f"need 0 < time_step_min <= time_step_max, got {self.time_step_range}")
        self._build(config.hidden_size, config.norm_eps)
        self.a_proj = nn.Linear(config.hidden_size, self.num_v_heads, bias=False)
        self.b_proj = nn.Linear(config.hidden_size, self.num_v_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads))
        self.dt_bias = nn.Parameter(torch.empty(self.num_v_heads))
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True
        self.init_own_parameters()

    def init_own_parameters(self) -> None:
        # transformers' init functions leave parameters loaded from a checkpoint alone
        init.copy_(self.A_log, self.initial_A_log().to(self.A_log.device))
        init.copy_(self.dt_bias, self.initial_dt_bias().to(self.dt_bias.device))

    def initial_A_log(self) -> Tensor:
        """Decay rates A ~ U(0, 16) (flash-linear-attention's initialisation)."""
        return torch.empty(self.num_v_heads).uniform_(0, 16).log()

    def initial_dt_bias(self, floor: float = 1e-4) -> Tensor:
        """softplus^-1 of time steps log-uniform in [time_step_min, time_step_max] (Mamba's initialisation;
        fla's range is [1e-3, 0.1])."""
        dt_min, dt_max = self.time_step_range
        floor = min(floor, dt_min)
        dt = torch.exp(torch.rand(self.num_v_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        return dt + torch.log(-torch.expm1(-dt))

    def _beta_and_log_decay(self, x: Tensor) -> tuple[Tensor, Tensor]:
        beta = torch.sigmoid(upcast(self.b_proj(x)))
        log_decay = -upcast(self.A_log).exp() * F.softplus(upcast(self.a_proj(x)) + upcast(self.dt_bias))
        return (2 * beta if self.allow_neg_eigval else beta), log_decay
