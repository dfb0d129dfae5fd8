"""The (gated) delta rule, in three equivalent forms.

Per head, with keys/queries of size d_k and values of size d_v, the memory is a matrix
``S [d_k, d_v]`` updated for every token t by

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,        o_t = S_t^T (scale * q_t)

where ``b_t`` is the writing strength (beta) and ``a_t = exp(g_t)`` the decay (``g = None``
means a = 1: plain DeltaNet; Gated DeltaNet passes its log-decay). The output reads the state
*after* the write.

- :func:`naive_delta_rule` is that formula, token by token: the test oracle.
- :func:`delta_rule_step` is one token of the same recurrence written for speed: decoding.
- :func:`chunk_delta_rule` is the chunkwise-parallel (WY) form: training and prefill.

All three take ``[B, T, H, d]`` inputs (flash-linear-attention's layout), compute in fp32 (or
fp64 when given fp64; autocast is switched off inside) and return outputs in that dtype.

States in the middle of a sequence are returned through a :class:`StateQuery`: "the state after
reading the first ``lengths[i]`` tokens of row ``rows[i]``". Inside a chunk that starts from S
the state after r tokens is ``gamma_r S + sum_{j<r} (gamma_r / gamma_j) k_j u_j^T`` — the same
update that ends the chunk, truncated — so snapshots cost one small matmul each and are
differentiable like everything else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..state import StateQuery
from .dtypes import compute_dtype


def _initial(initial_state: Tensor | None, B: int, H: int, dk: int, dv: int, like: Tensor) -> Tensor:
    if initial_state is None:
        return like.new_zeros(B, H, dk, dv)
    expected = (B, H, dk, dv)
    if tuple(initial_state.shape) != expected:
        raise ValueError(f"initial state has shape {tuple(initial_state.shape)}, expected {expected}")
    return initial_state.to(like.dtype)


def naive_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    query: StateQuery | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The recurrence exactly as written in the module docstring, one token at a time.

    Returns ``(o [B, T, H, d_v], final state [B, H, d_k, d_v], query states [M, H, d_k, d_v] | None)``.
    """
    B, T, H, dk = k.shape
    dv = v.shape[-1]
    dtype = compute_dtype(q)
    scale = dk**-0.5 if scale is None else scale
    with torch.autocast(q.device.type, enabled=False):
        q, k, v, beta = (x.to(dtype) for x in (q, k, v, beta))
        S = _initial(initial_state, B, H, dk, dv, q)
        eye = torch.eye(dk, dtype=dtype, device=q.device)
        history = [S]
        outputs = []
        for t in range(T):
            kt, bt = k[:, t], beta[:, t, :, None, None]
            decay = 1.0 if g is None else g[:, t].to(dtype).exp()[..., None, None]
            transition = eye - bt * kt[..., :, None] * kt[..., None, :]  # I - b k k^T
            S = decay * (transition @ S) + bt * kt[..., :, None] * v[:, t, :, None, :]
            outputs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, t] * scale))
            if query is not None:
                history.append(S)
        o = torch.stack(outputs, dim=1) if outputs else q.new_zeros(B, 0, H, dv)
        states = None
        if query is not None:
            query.check(B, T)
            picked = [history[n][r] for r, n in zip(query.rows.tolist(), query.lengths.tolist())]
            states = torch.stack(picked) if picked else S.new_zeros(0, H, dk, dv)
    return o, S, states


def delta_rule_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None,
    state: Tensor,
    *,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """One token: ``q, k [B, H, d_k]``, ``v [B, H, d_v]``, ``beta, g [B, H]``, ``state [B, H, d_k, d_v]``."""
    dtype = compute_dtype(q)
    scale = k.shape[-1] ** -0.5 if scale is None else scale
    with torch.autocast(q.device.type, enabled=False):
        q, k, v, beta = (x.to(dtype) for x in (q, k, v, beta))
        S = state.to(dtype)
        if g is not None:
            S = S * g.to(dtype).exp()[..., None, None]
        # delta correction: write b (v - S^T k) along k, i.e. replace what k currently retrieves
        u = beta[..., None] * (v - (k[..., None, :] @ S)[..., 0, :])
        S = S + k[..., :, None] * u[..., None, :]
        o = ((q * scale)[..., None, :] @ S)[..., 0, :]
    return o, S


def chunk_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    query: StateQuery | None = None,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Chunkwise-parallel delta rule (any length T; the last chunk is zero-padded, which is inert).

    Within a chunk starting from state S, with cumulative decays ``gamma_i = prod_{t<=i} a_t``,
    the corrected values solve a unit-lower-triangular system
    ``(I + A) U = diag(b) V - diag(b gamma) K S`` with ``A_ij = b_i (gamma_i/gamma_j) k_i.k_j``
    (j < i). Writing ``U~ = T diag(b) V`` and ``W = T diag(b gamma) K`` (T = (I + A)^-1, solved once
    for all chunks), each chunk then costs three matmuls:
    ``U = U~ - W S``, ``O = diag(gamma) Q S + (Q K^T * Gamma)_lower U``,
    ``S <- gamma_C S + (K * gamma_C/gamma)^T U``.

    Returns ``(o [B, T, H, d_v], final state [B, H, d_k, d_v], query states [M, H, d_k, d_v] | None)``.
    """
    B, T, H, dk = k.shape
    dv = v.shape[-1]
    dtype = compute_dtype(q)
    scale = dk**-0.5 if scale is None else scale
    C = chunk_size
    N = max(1, -(-T // C))
    pad = N * C - T

    with torch.autocast(q.device.type, enabled=False):
        S = _initial(initial_state, B, H, dk, dv, q.to(dtype))

        def chunks(x: Tensor) -> Tensor:  # [B, T, H, *d] -> [B, H, N, C, *d]
            x = x.to(dtype)
            x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
            x = x.reshape(B, N, C, *x.shape[2:])
            return x.movedim(3, 1)

        qc, kc, vc, bc = chunks(q * scale), chunks(k), chunks(v), chunks(beta)
        causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
        if g is None:
            gamma = None
            decay = causal.to(dtype)  # Gamma_ij = 1 for j <= i
        else:
            G = chunks(g).cumsum(-1)  # log gamma within each chunk, [B, H, N, C]
            gamma = G.exp()
            decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()

        A = (bc[..., :, None] * (kc @ kc.transpose(-1, -2)) * decay).tril(-1)
        bk = bc[..., None] * kc if gamma is None else (bc * gamma)[..., None] * kc
        rhs = torch.cat([bc[..., None] * vc, bk], dim=-1)
        solved = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
        U_tilde, W = solved[..., :dv], solved[..., dv:]
        scores = (qc @ kc.transpose(-1, -2)) * decay
        if gamma is None:
            q_read, k_write = qc, kc
        else:
            q_read = qc * gamma[..., None]
            # gamma_C / gamma_i as exp(G_C - G_i) <= 1: gamma itself underflows to 0 under a fast-forgetting gate
            k_write = kc * (G[..., -1:] - G).exp()[..., None]

        plan = _plan_queries(query, B, T, C)
        found: list[tuple[Tensor, Tensor]] = []
        if plan is not None and plan.at_start is not None:
            found.append((plan.at_start, S[query.rows[plan.at_start]]))

        outputs = []
        for n in range(N):
            U = U_tilde[:, :, n] - W[:, :, n] @ S
            outputs.append(q_read[:, :, n] @ S + scores[:, :, n] @ U)
            if plan is not None and n in plan.by_chunk:
                idx = plan.by_chunk[n]
                rows, last = query.rows[idx], query.lengths[idx] - n * C - 1  # last token read, 0..C-1
                m = torch.arange(len(idx), device=q.device)
                if gamma is None:  # Gamma[last, :] as [M, 1, C]
                    weights = decay[last][:, None, :]
                else:
                    weights = decay[rows, :, n][m, :, last]
                snapshot = (weights[..., None] * kc[rows, :, n]).transpose(-1, -2) @ U[rows]
                start = S[rows] if gamma is None else gamma[rows, :, n][m, :, last][..., None, None] * S[rows]
                found.append((idx, start + snapshot))
            if gamma is None:
                S = S + k_write[:, :, n].transpose(-1, -2) @ U
            else:
                S = gamma[:, :, n, -1, None, None] * S + k_write[:, :, n].transpose(-1, -2) @ U

        o = torch.stack(outputs, dim=2).reshape(B, H, N * C, dv)[:, :, :T].transpose(1, 2)
        states = None
        if plan is not None and not found:
            states = S.new_zeros(0, H, dk, dv)
        elif plan is not None:
            order = torch.cat([i for i, _ in found])
            states = torch.cat([s for _, s in found])[torch.argsort(order)]
    return o, S, states


class _QueryPlan:
    """Which queries fall into which chunk (queries at length 0 read the initial state)."""

    def __init__(self, at_start: Tensor | None, by_chunk: dict[int, Tensor]):
        self.at_start = at_start
        self.by_chunk = by_chunk


def _plan_queries(query: StateQuery | None, B: int, T: int, C: int) -> _QueryPlan | None:
    if query is None:
        return None
    query.check(B, T)
    lengths = query.lengths.tolist()
    at_start = [i for i, n in enumerate(lengths) if n == 0]
    by_chunk: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        if n > 0:
            by_chunk.setdefault((n - 1) // C, []).append(i)
    device = query.rows.device
    return _QueryPlan(
        torch.tensor(at_start, dtype=torch.long, device=device) if at_start else None,
        {c: torch.tensor(ix, dtype=torch.long, device=device) for c, ix in by_chunk.items()},
    )
