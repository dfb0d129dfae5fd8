"""The pure tensor ops: the three delta-rule forms agree, the conv cache cuts anywhere, sliced LM-head stats."""

from __future__ import annotations

import pytest
import torch

from refine_lm.ops.conv import causal_conv1d, causal_conv1d_step, conv_cache_at
from refine_lm.ops.delta_rule import chunk_delta_rule, delta_rule_step, naive_delta_rule
from refine_lm.ops.lm_head import IGNORE_INDEX, token_logprobs, token_stats
from refine_lm.ops.norm import l2_normalize
from refine_lm.ops.sampling import filter_logits, inverse_cdf, sample_tokens
from refine_lm.state import StateQuery

F64 = torch.float64


def delta_inputs(B=2, T=37, H=3, dk=8, dv=6, gated=False, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, dk, generator=g, dtype=F64)
    k = l2_normalize(torch.randn(B, T, H, dk, generator=g, dtype=F64), 1e-6, squared=True)
    v = torch.randn(B, T, H, dv, generator=g, dtype=F64)
    beta = torch.rand(B, T, H, generator=g, dtype=F64)
    decay = -torch.rand(B, T, H, generator=g, dtype=F64) if gated else None
    s0 = torch.randn(B, H, dk, dv, generator=g, dtype=F64)
    tensors = [q, k, v, beta, decay, s0]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [1, 7, 16, 33, 64, 100])
@pytest.mark.parametrize("with_initial", [False, True])
def test_chunk_equals_naive(gated, T, with_initial):
    q, k, v, beta, g, s0 = delta_inputs(T=T, gated=gated)
    s0 = s0 if with_initial else None
    o_ref, s_ref, _ = naive_delta_rule(q, k, v, beta, g, initial_state=s0)
    o, s, _ = chunk_delta_rule(q, k, v, beta, g, initial_state=s0, chunk_size=16)
    assert torch.allclose(o, o_ref, atol=1e-10, rtol=0)
    assert torch.allclose(s, s_ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("gated", [False, True])
def test_step_equals_naive(gated):
    q, k, v, beta, g, s0 = delta_inputs(T=20, gated=gated)
    o_ref, s_ref, _ = naive_delta_rule(q, k, v, beta, g, initial_state=s0)
    s, outs = s0, []
    for t in range(20):
        o, s = delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], None if g is None else g[:, t], s)
        outs.append(o)
    assert torch.allclose(torch.stack(outs, 1), o_ref, atol=1e-12, rtol=0)
    assert torch.allclose(s, s_ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("gated", [False, True])
def test_chunk_gradients_equal_naive(gated):
    inputs = delta_inputs(T=45, gated=gated, requires_grad=True)
    q, k, v, beta, g, s0 = inputs
    w = torch.randn(2, 45, 3, 6, dtype=F64)
    grads = []
    for fn in (naive_delta_rule, chunk_delta_rule):
        kwargs = {"chunk_size": 16} if fn is chunk_delta_rule else {}
        o, s, _ = fn(q, k, v, beta, g, initial_state=s0, **kwargs)
        loss = (o * w).sum() + s.pow(2).sum()
        leaves = [t for t in inputs if t is not None]
        grads.append(torch.autograd.grad(loss, leaves))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_strong_decay_keeps_gradients_finite(dtype):
    # a gate that forgets fast: the within-chunk cumulative decay exp(sum g) underflows to 0, so the
    # chunk form must never divide by it (the regression: NaN gradients with a finite loss)
    q, k, v, beta, _, s0 = (t.to(dtype) if t is not None else None for t in delta_inputs(T=64, gated=True))
    g = torch.full(q.shape[:3], -30.0, dtype=dtype)
    leaves = [t.requires_grad_(True) for t in (q, k, v, beta, g, s0)]
    w = torch.randn(*v.shape, dtype=dtype)
    grads = []
    for fn in (naive_delta_rule, chunk_delta_rule):
        kwargs = {"chunk_size": 32} if fn is chunk_delta_rule else {}
        o, s, _ = fn(q, k, v, beta, g, initial_state=s0, **kwargs)
        grads.append(torch.autograd.grad((o * w).sum() + s.pow(2).sum(), leaves))
    for a, b in zip(*grads):
        assert torch.isfinite(b).all()
        assert torch.allclose(a, b, atol=1e-4 if dtype == torch.float32 else 1e-10, rtol=1e-4)


@pytest.mark.parametrize("gated", [False, True])
def test_query_states_equal_prefix_final_states(gated):
    q, k, v, beta, g, s0 = delta_inputs(T=50, gated=gated)
    rows = torch.tensor([0, 1, 1, 0, 1, 0])
    lengths = torch.tensor([0, 50, 17, 16, 1, 33])  # start, end, mid-chunk, chunk boundary, first token
    _, _, chunk_states = chunk_delta_rule(q, k, v, beta, g, initial_state=s0, query=StateQuery(rows, lengths), chunk_size=16)
    _, _, naive_states = naive_delta_rule(q, k, v, beta, g, initial_state=s0, query=StateQuery(rows, lengths))
    assert torch.allclose(chunk_states, naive_states, atol=1e-10, rtol=0)
    for i, (r, n) in enumerate(zip(rows.tolist(), lengths.tolist())):
        sl = slice(r, r + 1)
        _, prefix_final, _ = naive_delta_rule(
            q[sl, :n], k[sl, :n], v[sl, :n], beta[sl, :n], None if g is None else g[sl, :n], initial_state=s0[sl]
        )
        assert torch.allclose(chunk_states[i], prefix_final[0], atol=1e-10, rtol=0)


def test_query_out_of_range_is_a_clear_error():
    q, k, v, beta, _, _ = delta_inputs(T=10)
    with pytest.raises(ValueError, match="lengths must be in"):
        chunk_delta_rule(q, k, v, beta, query=StateQuery(torch.tensor([0]), torch.tensor([11])))


def test_conv_cache_cuts_anywhere():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, 5, generator=g, dtype=F64)
    w = torch.randn(5, 4, generator=g, dtype=F64)
    y_full, padded = causal_conv1d(x, w)
    y_a, padded_a = causal_conv1d(x[:, :11], w)
    cache = padded_a[:, -3:]
    y_b, _ = causal_conv1d(x[:, 11:], w, cache=cache)
    assert torch.allclose(torch.cat([y_a, y_b], 1), y_full)
    # the cache at any position equals the cache of a run over the prefix
    at = conv_cache_at(padded, torch.tensor([0, 1]), torch.tensor([11, 2]), 4)
    assert torch.allclose(at[0], cache[0])
    # token by token
    cache, outs = x.new_zeros(2, 3, 5), []
    for t in range(30):
        y, cache = causal_conv1d_step(x[:, t], w, None, cache)
        outs.append(y)
    assert torch.allclose(torch.stack(outs, 1), y_full)


def test_token_logprobs_sliced_equals_full_and_gradients_match():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 17, 8, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(50, 8, generator=g, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 17), generator=g)
    targets[0, 3] = IGNORE_INDEX
    full = (hidden @ weight.T).log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    full = full.masked_fill(targets == IGNORE_INDEX, 0)
    sliced = token_logprobs(hidden, weight, targets, slice_len=5)
    assert torch.allclose(sliced, full)
    g_full = torch.autograd.grad(full.sum(), (hidden, weight))
    g_sliced = torch.autograd.grad(token_logprobs(hidden, weight, targets, slice_len=5).sum(), (hidden, weight))
    for a, b in zip(g_full, g_sliced):
        assert torch.allclose(a, b)
    stats = token_stats(hidden, weight, targets, slice_len=4)
    logp = (hidden @ weight.T).log_softmax(-1)
    assert torch.allclose(stats.entropy, -(logp.exp() * logp).sum(-1))
    assert torch.equal(stats.argmax, logp.argmax(-1))
    assert torch.allclose(stats.logprobs, full)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus 0.7: 0.5 alone is not enough, 0.5 + 0.3 is
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.4)).tolist() == [[False, True, True, True]]
    assert not torch.isinf(filter_logits(logits, top_p=1.0)).any()


def test_sampling_greedy_and_logprobs():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    tokens, logp = sample_tokens(logits, do_sample=False)
    assert tokens.tolist() == [1, 0]
    assert torch.allclose(logp, logits.log_softmax(-1)[[0, 1], [1, 0]])
    gen = torch.Generator().manual_seed(0)
    tokens, logp = sample_tokens(logits, do_sample=True, top_k=1, generator=gen)
    assert tokens.tolist() == [1, 0]  # top-k 1 is greedy
    tokens, logp = sample_tokens(logits, do_sample=True, temperature=0.5, generator=gen)
    assert torch.allclose(logp, (logits / 0.5).log_softmax(-1).gather(-1, tokens[:, None])[:, 0])


def test_inverse_cdf_draws_follow_the_distribution_row_by_row():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    # boundaries: [0, 0.5) -> 0, [0.5, 0.8) -> 2, [0.8, 1) -> 3; zero-mass tokens never come out
    u = torch.tensor([0.0, 0.49, 0.5, 0.79, 0.8, 0.999999, 1 - 2**-53], dtype=torch.float64)
    assert inverse_cdf(probs.expand(len(u), -1), u).tolist() == [0, 0, 2, 2, 3, 3, 3]
    assert inverse_cdf(probs[None] * 7, u[[2]]).tolist() == [2]  # unnormalised mass
    many = inverse_cdf(probs.expand(20000, -1), torch.rand(20000, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(torch.bincount(many, minlength=5) / 20000.0, probs, atol=0.015)
    # a row's draw does not depend on the rest of the batch
    batch = torch.softmax(torch.randn(6, 50, generator=torch.Generator().manual_seed(1), dtype=torch.float64), -1)
    draws = torch.rand(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert inverse_cdf(batch, draws)[3:].tolist() == inverse_cdf(batch[3:], draws[3:]).tolist()
