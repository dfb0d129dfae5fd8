"""LaCT (Large Chunk Test-Time Training) math: fast-weight SwiGLU memories and sliding-window attention.

Each fast-weight head keeps a small SwiGLU MLP as its memory, ``f_W(x) = W1 (SiLU(W0 x) * (W2 x))``.
Tokens are grouped in chunks of C counted from the start of the sequence (chunk n holds positions
nC .. nC + C - 1). Every token of chunk n is *read* with the weights W_n; when the chunk is complete
the weights take one step on its tokens:

    G_i = d/dW_i  sum_t lr_{i,t} <f_W(k_t), v_t>          (i = 0, 1, 2; each weight has its own rates)
    G_i <- G_i + mean_t(gate_t) * M_i,   M_i <- G_i         (optional momentum)
    G_i <- NewtonSchulz(G_i)                                (optional Muon orthogonalisation, :class:`Muon`)
    W_i <- rows of (W_i + G_i) rescaled to the row norms of the initial W_i

i.e. gradient descent with per-token learning rates on ``-sum_t lr_t <f_W(k_t), v_t>``. Beside it
runs causal softmax attention over a sliding window of W tokens (RoPE at absolute positions).

- :func:`fast_weight_gradients` writes that gradient by hand (the tests check it against autograd);
  :func:`fast_weight_update` is one chunk's whole step.
- :func:`chunk_fast_weights` reads a sequence from any memory: a partly filled pending chunk,
  rows at different positions (which cross chunk boundaries at different tokens), and returns the
  memory after any requested prefix length, differentiably. :func:`fast_weight_step` reads one token.
- :func:`window_attention` reads a sequence block by block (memory O(T * (block + W)), never
  O(T^2)); :func:`window_attention_step` reads one token.

Everything runs in fp32 (fp64 when given fp64) with autocast switched off, like the delta rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..state import FastWeightMemory, StateQuery, WindowCache
from .dtypes import compute_dtype
from .norm import l2_normalize

# Quintic Newton-Schulz coefficients of the public Muon implementations (one (a, b, c) per iteration).
NEWTON_SCHULZ_COEFFICIENTS = (
    (4.0848, -6.8946, 2.9270),
    (3.9505, -6.3029, 2.6377),
    (3.7418, -5.5913, 2.3037),
    (2.8769, -3.1427, 1.2046),
    (2.8366, -3.0525, 1.2012),
)

FastWeights = tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class Muon:
    """How a chunk's update is orthogonalised, as lact_llm does it.

    dtype: the Newton-Schulz iteration's precision. lact_llm casts the update to bf16 before it, so
        ``torch.bfloat16`` reproduces its checkpoints' outputs; ``None`` computes it in the update's own
        dtype (fp32, or fp64 with fp64 inputs, like the rest of the fast-weight branch).
    joint_w0_w2: orthogonalise ``[G_0; G_2]`` (stacked along the hidden dim) as one matrix, as
        lact_llm's fused-kernel path does, instead of ``G_0`` and ``G_2`` apart.
    """

    dtype: torch.dtype | None = torch.bfloat16
    joint_w0_w2: bool = False

    def __call__(self, grads: FastWeights) -> FastWeights:
        g0, g1, g2 = grads
        if self.joint_w0_w2:
            g02 = newton_schulz(torch.cat([g0, g2], dim=-2), dtype=self.dtype)
            g0, g2 = g02.split([g0.shape[-2], g2.shape[-2]], dim=-2)
            return g0, newton_schulz(g1, dtype=self.dtype), g2
        return tuple(newton_schulz(g, dtype=self.dtype) for g in grads)


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y."""
    return y + math.log(-math.expm1(-y))


def rotary_tables(positions: Tensor, dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin ``[B, T, 1, dim / 2]`` of the RoPE angles at absolute ``positions [B, T]`` (computed in fp32,
    as flash-linear-attention's ``RotaryEmbedding``)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.to(torch.float32)[..., None, None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, T, H, d]``: the two halves of each head form the pairs (GPT-NeoX layout, as fla)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def swiglu_fast_weights(weights: FastWeights, x: Tensor) -> Tensor:
    """``f_W(x)`` for ``x [B, H, N, d_k]`` with ``W0, W2 [B, H, d_h, d_k]``, ``W1 [B, H, d_v, d_h]`` -> ``[B, H, N, d_v]``."""
    w0, w1, w2 = weights
    return (F.silu(x @ w0.transpose(-1, -2)) * (x @ w2.transpose(-1, -2))) @ w1.transpose(-1, -2)


def fast_weight_gradients(weights: FastWeights, k: Tensor, v: Tensor, lr: Tensor) -> FastWeights:
    """``d/dW_i sum_t lr[..., t, i] <f_W(k_t), v_t>`` for i = 0, 1, 2 (the ascent direction).

    ``k [B, H, C, d_k]``, ``v [B, H, C, d_v]``, ``lr [B, H, C, 3]``. With ``g = W0 k``, ``u = W2 k``
    and ``h = SiLU(g) * u``: ``<f, v> = v . W1 h``, so ``dh = W1^T v``, ``du = dh * SiLU(g)``,
    ``dg = dh * u * SiLU'(g)`` and the gradients are sums of outer products over the chunk's tokens.
    """
    w0, w1, w2 = weights
    gate, up = k @ w0.transpose(-1, -2), k @ w2.transpose(-1, -2)  # [B, H, C, d_h]
    sig = torch.sigmoid(gate)
    act = gate * sig
    d_hidden = v @ w1  # [B, H, C, d_h]
    d_up = d_hidden * act
    d_gate = d_hidden * up * sig * (1 + gate * (1 - sig))
    g0 = d_gate.transpose(-1, -2) @ (k * lr[..., 0:1])
    g1 = (v * lr[..., 1:2]).transpose(-1, -2) @ (act * up)
    g2 = d_up.transpose(-1, -2) @ (k * lr[..., 2:3])
    return g0, g1, g2


def newton_schulz(g: Tensor, eps: float = 1e-7, dtype: torch.dtype | None = None) -> Tensor:
    """Approximately orthogonalise the last two dims of ``g`` (Muon): ``U S V^T -> U p(S) V^T`` with p
    five quintic Newton-Schulz steps on the singular values scaled by the Frobenius norm. Computed in
    ``dtype`` (default: ``g``'s) and returned in ``g``'s dtype."""
    tall = g.shape[-2] > g.shape[-1]
    x = g.transpose(-1, -2) if tall else g
    x = x.to(dtype or g.dtype)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    for a, b, c in NEWTON_SCHULZ_COEFFICIENTS:
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    x = x.to(g.dtype)
    return x.transpose(-1, -2) if tall else x


def fast_weight_update(
    weights: FastWeights,
    momentum: FastWeights | None,
    norms: FastWeights,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    gate: Tensor | None,
    muon: Muon | None,
    eps: float = 1e-5,
) -> tuple[FastWeights, FastWeights | None]:
    """One chunk's step (module docstring) from ``k, v, lr`` as in :func:`fast_weight_gradients` and the
    momentum gates ``gate [B, H, C]``. Returns the new weights and momentum buffers."""
    grads = fast_weight_gradients(weights, k, v, lr)
    if momentum is not None:
        beta = gate.mean(dim=-1)[..., None, None]
        grads = tuple(g + beta * m for g, m in zip(grads, momentum))
        momentum = grads
    if muon is not None:
        grads = muon(grads)
    new = tuple(w + g for w, g in zip(weights, grads))
    return tuple(l2_normalize(w, eps, squared=False) * n for w, n in zip(new, norms)), momentum


def _pick(tensors: tuple[Tensor, ...] | None, rows: Tensor) -> tuple[Tensor, ...] | None:
    return None if tensors is None else tuple(t[rows] for t in tensors)


def _stream_index(u: Tensor, pending: Tensor, C: int) -> Tensor:
    """Where token u of a row's stream (counted from its current chunk's start) lies in
    ``cat([pending buffer (C - 1 slots), new tokens])``, given ``pending`` tokens already buffered."""
    return torch.where(u < pending, u, C - 1 + u - pending)


def chunk_fast_weights(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    gate: Tensor | None,
    memory: FastWeightMemory,
    position: Tensor,
    *,
    chunk_size: int,
    muon: Muon | None,
    query: StateQuery | None = None,
) -> tuple[Tensor, FastWeightMemory, FastWeightMemory | None]:
    """Read ``T`` tokens per row through the fast weights, updating them at every chunk boundary.

    ``q, k [B, T, H, d_k]``, ``v [B, T, H, d_v]``, ``lr [B, T, H, 3]``, ``gate [B, T, H]`` (momentum
    gates, or None); ``position [B]``: tokens each row read before (so ``position % C`` of them are
    pending in ``memory``). Row b's stream is its pending tokens followed by the new ones; its chunk j
    is stream tokens jC .. jC + C - 1. Round j reads every new token of chunk j with the current
    weights and then updates the rows whose chunk j is complete.

    Returns ``(o [B, T, H, d_v], memory after the input, memories after query.lengths tokens of
    query.rows | None)``.
    """
    B, T, H, _ = q.shape
    C = chunk_size
    dtype = compute_dtype(q)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v, lr = (x.to(dtype) for x in (q, k, v, lr))
        gate = None if gate is None else gate.to(dtype)
        if memory.w0.dtype != dtype:
            memory = memory.to(dtype=dtype)
        pending = position % C
        total = pending + T  # stream length of each row
        stream = [
            torch.cat([memory.pending_k, k], 1),
            torch.cat([memory.pending_v, v], 1),
            torch.cat([memory.pending_lr, lr], 1),
            None if gate is None else torch.cat([memory.pending_gate, gate], 1),
        ]
        weights = (memory.w0, memory.w1, memory.w2)
        momentum = None if memory.momentum0 is None else (memory.momentum0, memory.momentum1, memory.momentum2)
        norms = (memory.norm0, memory.norm1, memory.norm2)
        versions = [(weights, momentum)]  # versions[j]: after chunk j - 1 of each row's stream

        batch = torch.arange(B, device=q.device)
        o = q.new_zeros(B, T, H, v.shape[-1])
        for j in range(int((total - 1).max()) // C + 1):
            # read: new tokens t with pending + t in [jC, jC + C)
            start = (j * C - pending).clamp(0, T)
            count = ((j + 1) * C - pending).clamp(max=T) - start
            width = int(count.max())
            if width > 0:
                offsets = torch.arange(width, device=q.device)
                t = (start[:, None] + offsets).clamp(max=T - 1)
                rows = batch[:, None].expand_as(t)
                read = swiglu_fast_weights(weights, q[rows, t].transpose(1, 2)).transpose(1, 2)
                read = read * (offsets < count[:, None])[..., None, None].to(dtype)
                o = o.index_put((rows, t), read, accumulate=True)
            # update: rows whose chunk j ends inside this input
            done = (j + 1) * C <= total
            if bool(done.any()):
                rows = done.nonzero()[:, 0]
                idx = _stream_index(j * C + torch.arange(C, device=q.device)[None], pending[rows, None], C)
                kc, vc, lrc = (s[rows[:, None], idx].transpose(1, 2) for s in stream[:3])
                gc = None if gate is None else stream[3][rows[:, None], idx].transpose(1, 2)
                new_w, new_m = fast_weight_update(
                    _pick(weights, rows), _pick(momentum, rows), _pick(norms, rows), kc, vc, lrc, gc, muon
                )
                if len(rows) == B:
                    weights, momentum = new_w, new_m
                else:
                    weights = tuple(w.index_put((rows,), n) for w, n in zip(weights, new_w))
                    if momentum is not None:
                        momentum = tuple(m.index_put((rows,), n) for m, n in zip(momentum, new_m))
            versions.append((weights, momentum))

        def pending_chunk(rows: Tensor, length: Tensor) -> list[Tensor | None]:
            """The buffered tokens of ``rows`` after ``length`` stream tokens, zeros after them."""
            slots = torch.arange(C - 1, device=q.device)
            idx = _stream_index((length // C * C)[:, None] + slots, pending[rows, None], C)
            idx = idx.clamp(max=C - 2 + T)
            keep = slots[None] < (length % C)[:, None]
            out = []
            for s in stream:
                if s is None:
                    out.append(None)
                    continue
                picked = s[rows[:, None], idx]
                out.append(picked * keep.reshape(*keep.shape, *([1] * (picked.dim() - 2))).to(dtype))
            return out

        def memory_at(rows: Tensor, ws: FastWeights, ms: FastWeights | None, length: Tensor) -> FastWeightMemory:
            pk, pv, plr, pg = pending_chunk(rows, length)
            return FastWeightMemory(
                *ws, *(n[rows] for n in norms), *(ms if ms is not None else (None, None, None)), pk, pv, plr, pg
            )

        # rows that completed no chunk in a round keep their weights: the last version holds every row's
        final = memory_at(batch, weights, momentum, total)
        at_query = None
        if query is not None:
            query.check(B, T)
            length = pending[query.rows] + query.lengths
            version = length // C
            found, order = [], []
            for j in version.unique().tolist():
                sel = (version == j).nonzero()[:, 0]
                rows = query.rows[sel]
                ws, ms = versions[j]
                found.append(memory_at(rows, _pick(ws, rows), _pick(ms, rows), length[sel]))
                order.append(sel)
            if found:
                at_query = FastWeightMemory.cat(found).index(torch.argsort(torch.cat(order)))
            else:
                at_query = final.index(query.rows)  # no queries: an empty batch of the right layout
    return o, final, at_query


def fast_weight_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lr: Tensor,
    gate: Tensor | None,
    memory: FastWeightMemory,
    position: Tensor,
    *,
    chunk_size: int,
    muon: Muon | None,
) -> tuple[Tensor, FastWeightMemory]:
    """One token per row: ``q, k [B, H, d_k]``, ``v [B, H, d_v]``, ``lr [B, H, 3]``, ``gate [B, H]``.
    The token is read with the current weights, then buffered; a row whose token completes its chunk
    (``position % C == C - 1``) takes the update and empties its buffer."""
    B = q.shape[0]
    C = chunk_size
    dtype = compute_dtype(q)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v, lr = (x.to(dtype) for x in (q, k, v, lr))
        gate = None if gate is None else gate.to(dtype)
        if memory.w0.dtype != dtype:
            memory = memory.to(dtype=dtype)
        weights = (memory.w0, memory.w1, memory.w2)
        momentum = None if memory.momentum0 is None else (memory.momentum0, memory.momentum1, memory.momentum2)
        o = swiglu_fast_weights(weights, q[:, :, None])[:, :, 0]

        pending = position % C
        completes = pending == C - 1
        olds = (memory.pending_k, memory.pending_v, memory.pending_lr, memory.pending_gate)
        buffered = list(olds)
        if C > 1:  # buffer the token (one copy of each buffer: index_put out of place)
            at = (torch.arange(B, device=q.device), pending.clamp(max=C - 2))
            buffered = [None if old is None else old.index_put(at, new) for old, new in zip(olds, (k, v, lr, gate))]
        if bool(completes.any()):
            rows = completes.nonzero()[:, 0]
            chunk = [
                torch.cat([old[rows], new[rows, None]], 1).transpose(1, 2)
                for old, new in ((memory.pending_k, k), (memory.pending_v, v), (memory.pending_lr, lr))
            ]
            gc = None if gate is None else torch.cat([memory.pending_gate[rows], gate[rows, None]], 1).transpose(1, 2)
            norms = (memory.norm0, memory.norm1, memory.norm2)
            new_w, new_m = fast_weight_update(_pick(weights, rows), _pick(momentum, rows), _pick(norms, rows), *chunk, gc, muon)
            weights = tuple(w.index_put((rows,), n) for w, n in zip(weights, new_w))
            if momentum is not None:
                momentum = tuple(m.index_put((rows,), n) for m, n in zip(momentum, new_m))
            # their chunk is complete: empty the buffer (which also drops the token written at the clamped slot)
            buffered = [None if b is None else b.index_put((rows,), b.new_zeros(())) for b in buffered]
        new_memory = FastWeightMemory(
            *weights,
            memory.norm0,
            memory.norm1,
            memory.norm2,
            *(momentum if momentum is not None else (None, None, None)),
            *buffered,
        )
    return o, new_memory


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cache: WindowCache,
    position: Tensor,
    *,
    block_size: int = 256,
    query: StateQuery | None = None,
) -> tuple[Tensor, WindowCache, WindowCache | None]:
    """Causal attention of every token over itself and the ``W - 1`` tokens before it.

    ``q, k, v [B, T, A, d]`` (already rotated), ``cache`` the keys and values of the ``W - 1`` tokens
    before them, ``position [B]`` tokens read before (cache slots before the sequence start are masked).
    Queries are processed ``block_size`` at a time against the ``block + W - 1`` keys they can see.
    Returns ``(o [B, T, A, d], cache after the input, caches after query.lengths tokens | None)``.
    """
    B, T = q.shape[:2]
    n = cache.keys.shape[1]  # W - 1
    dtype = compute_dtype(q)
    with torch.autocast(q.device.type, enabled=False):
        q = q.to(dtype)
        keys = torch.cat([cache.keys.to(dtype), k.to(dtype)], 1)  # key j is token j - n
        values = torch.cat([cache.values.to(dtype), v.to(dtype)], 1)
        cols = torch.arange(n + T, device=q.device)
        readable = cols[None] >= (n - position)[:, None]  # [B, n + T]: keys of tokens of the sequence
        outputs = []
        for s in range(0, T, block_size):
            e = min(T, s + block_size)
            t = torch.arange(s, e, device=q.device)[:, None]
            j = cols[None, s : e + n]
            mask = ((j >= t) & (j <= t + n))[None] & readable[:, None, s : e + n]
            block = F.scaled_dot_product_attention(
                q[:, s:e].transpose(1, 2),
                keys[:, s : e + n].transpose(1, 2),
                values[:, s : e + n].transpose(1, 2),
                attn_mask=mask[:, None],
            )
            outputs.append(block.transpose(1, 2))
        o = torch.cat(outputs, 1)
        # clone: a view would keep the whole segment's keys alive in the state
        final = WindowCache(keys[:, T:].clone(), values[:, T:].clone())
        at_query = None
        if query is not None:
            query.check(B, T)
            idx = query.lengths[:, None] + torch.arange(n, device=q.device)
            at_query = WindowCache(keys[query.rows[:, None], idx], values[query.rows[:, None], idx])
    return o, final, at_query


def window_attention_step(q: Tensor, k: Tensor, v: Tensor, cache: WindowCache, position: Tensor) -> tuple[Tensor, WindowCache]:
    """One token per row: ``q, k, v [B, A, d]`` (rotated) -> ``(o [B, A, d], cache after the token)``."""
    n = cache.keys.shape[1]
    dtype = compute_dtype(q)
    with torch.autocast(q.device.type, enabled=False):
        keys = torch.cat([cache.keys.to(dtype), k.to(dtype)[:, None]], 1)
        values = torch.cat([cache.values.to(dtype), v.to(dtype)[:, None]], 1)
        readable = torch.arange(n + 1, device=q.device)[None] >= (n - position)[:, None]
        o = F.scaled_dot_product_attention(
            q.to(dtype)[:, :, None], keys.transpose(1, 2), values.transpose(1, 2), attn_mask=readable[:, None, None]
        )
    return o[:, :, 0], WindowCache(keys[:, 1:], values[:, 1:])
