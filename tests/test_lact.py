"""LaCT: decoding across chunk boundaries, the fast-weight update vs autograd, windowed vs dense attention,
states at positions (also batched from different positions), and lact_llm checkpoints.

The generic model tests (tests/test_models.py, tests/test_checkpoints.py) run for LaCT too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from transformers import AutoModelForCausalLM

from refine_lm import LaCTConfig, LaCTForCausalLM, LaCTState, ModelState
from refine_lm.models.registry import build_config, build_model, load_model
from refine_lm.ops.conv import causal_conv1d
from refine_lm.ops.lact import (
    NEWTON_SCHULZ_COEFFICIENTS,
    Muon,
    chunk_fast_weights,
    fast_weight_gradients,
    fast_weight_step,
    newton_schulz,
    swiglu_fast_weights,
    window_attention,
    window_attention_step,
)
from refine_lm.state import FastWeightMemory, StateQuery, WindowCache

from .conftest import random_ids, states_close, tiny_model

TOL = dict(atol=1e-10, rtol=0)
OPTIMISERS = [
    dict(use_momentum=False, use_muon=False),
    dict(use_momentum=True, use_muon=False),
    dict(use_momentum=False, use_muon=True),
    dict(use_momentum=True, use_muon=True),
]


def lact(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> LaCTForCausalLM:
    return build_model("lact", "tiny", seed=seed, **overrides).to(dtype).eval()


def decode_from(model, ids: torch.Tensor, p: int):
    """Prefill ids[:, :p], then step through the rest: logits predicting tokens p .. L-1, and the final state."""
    prefill = model(ids[:, :p], return_hidden="last")
    state, hidden = prefill.state, prefill.last_hidden_state[:, 0]
    logits = [model.lm_head(hidden)]
    for t in range(p, ids.shape[1]):
        hidden, state = model.step(ids[:, t], state)
        logits.append(model.lm_head(hidden))
    return torch.stack(logits[:-1], dim=1), state


# ----- decoding = one forward, across chunk boundaries ----------------------------------------------


@pytest.mark.parametrize("optimiser", OPTIMISERS, ids=lambda o: f"momentum={o['use_momentum']},muon={o['use_muon']}")
def test_prefill_then_decode_matches_one_forward_across_chunk_boundaries(optimiser):
    low_rank = 4 if optimiser["use_muon"] else -1  # both initial-weight parameterisations
    model = lact(lact_chunk_size=16, window_size=16, w0_w2_low_rank=low_rank, **optimiser)
    ids = random_ids(2, 100)
    full = model(ids)
    assert full.state.layers[0].position.tolist() == [100, 100]
    for p in (1, 16, 37):  # decoding then crosses 6, 5 and 4 chunk boundaries
        decoded, state = decode_from(model, ids, p)
        assert torch.allclose(decoded, full.logits[:, p - 1 : 99], **TOL), p
        assert states_close(state, full.state), p


def test_decoding_updates_the_fast_weights_at_every_boundary():
    """The state after decoding is not the attention cache alone: the fast weights moved at 16, 32, 48."""
    model = lact(lact_chunk_size=16, window_size=16)
    ids = random_ids(1, 50)
    _, state = decode_from(model, ids, 1)
    initial = model.init_state(1)
    for layer, start in zip(state.layers, initial.layers):
        assert not torch.allclose(layer.fast.w1, start.fast.w1)
        assert int(layer.position) == 50 and torch.count_nonzero(layer.fast.pending_k[0, 2:]) == 0
    # dropping the fast weights (what lact_llm's cached generation does) changes the predictions
    stale = ModelState(
        [LaCTState(start.fast, layer.window, layer.position) for layer, start in zip(state.layers, initial.layers)]
    )
    hidden_true, _ = model.step(ids[:, -1], state)
    hidden_stale, _ = model.step(ids[:, -1], stale)
    assert not torch.allclose(hidden_true, hidden_stale, atol=1e-6)


def test_chunkwise_equals_stepwise_with_window_shorter_and_longer_than_chunk():
    for chunk, window in ((8, 3), (5, 17), (1, 1)):
        model = lact(lact_chunk_size=chunk, window_size=window)
        ids = random_ids(2, 23)
        chunked = model(ids)
        stepped = model.set_backend("naive")(ids)
        assert torch.allclose(chunked.logits, stepped.logits, **TOL), (chunk, window)
        assert states_close(chunked.state, stepped.state), (chunk, window)


# ----- the fast-weight update ------------------------------------------------------------------------


def random_fast_weights(B=2, H=3, dk=5, dh=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(B, H, dh, dk, generator=g, dtype=torch.float64) / dk**0.5
    w1 = torch.randn(B, H, dk, dh, generator=g, dtype=torch.float64) / dh**0.5
    w2 = torch.randn(B, H, dh, dk, generator=g, dtype=torch.float64) / dk**0.5
    return w0, w1, w2


def test_fast_weight_gradients_equal_autograd_of_the_chunk_loss():
    weights = random_fast_weights()
    g = torch.Generator().manual_seed(1)
    k, v = torch.randn(2, 3, 9, 5, generator=g, dtype=torch.float64), torch.randn(2, 3, 9, 5, generator=g, dtype=torch.float64)
    lr = torch.rand(2, 3, 9, 3, generator=g, dtype=torch.float64)
    hand = fast_weight_gradients(weights, k, v, lr)
    for i in range(3):
        leaves = [w.clone().requires_grad_(True) for w in weights]
        # the chunk loss with weight i's learning rates: sum_t lr_{i,t} <f_W(k_t), v_t>
        loss = (lr[..., i] * (swiglu_fast_weights(leaves, k) * v).sum(-1)).sum()
        (expected,) = torch.autograd.grad(loss, leaves[i])
        assert torch.allclose(hand[i], expected, atol=1e-12, rtol=0), i


def test_newton_schulz_is_the_quintic_polynomial_of_the_singular_values():
    g = torch.randn(2, 3, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    s = s / (g.norm(dim=(-2, -1), keepdim=True)[..., 0] + 1e-7)
    for a, b, c in NEWTON_SCHULZ_COEFFICIENTS:
        s = a * s + b * s**3 + c * s**5
    assert torch.allclose(newton_schulz(g), u @ torch.diag_embed(s) @ vh, atol=1e-12, rtol=0)
    assert torch.allclose(newton_schulz(g.transpose(-1, -2)), (u @ torch.diag_embed(s) @ vh).transpose(-1, -2), atol=1e-12)


def reference_fast_weights(q, k, v, lr, gate, weights, chunk_size, use_muon):
    """The large-chunk recurrence written directly, one sequence from the initial weights: read every token of a chunk
    with the current weights, then (if the chunk is complete) take the update, the gradient coming from autograd."""
    T, C = q.shape[0], chunk_size
    norms = [w.norm(dim=-1, keepdim=True) for w in weights]
    momentum = [torch.zeros_like(w) for w in weights]
    outputs = []
    for s in range(0, T, C):
        e = min(T, s + C)
        outputs.append(swiglu_fast_weights(weights, q[s:e].transpose(0, 1)[None])[0].transpose(0, 1))
        if e - s < C:
            break
        leaves = [w.detach().requires_grad_(True) for w in weights]
        kc, vc = k[s:e].transpose(0, 1)[None], v[s:e].transpose(0, 1)[None]
        steps = []
        for i in range(3):
            loss = (lr[s:e, :, i].T[None] * (swiglu_fast_weights(leaves, kc) * vc).sum(-1)).sum()
            steps.append(torch.autograd.grad(loss, leaves[i])[0])
        if gate is not None:
            beta = gate[s:e].mean(0)[None, :, None, None]
            steps = [g + beta * m for g, m in zip(steps, momentum)]
            momentum = steps
        if use_muon:
            steps = [newton_schulz(g) for g in steps]
        weights = [(w + g) / ((w + g).norm(dim=-1, keepdim=True) + 1e-5) * n for w, g, n in zip(weights, steps, norms)]
    return torch.cat(outputs, 0)


def empty_memory(weights, C: int, momentum: bool) -> FastWeightMemory:
    H, dk = weights[0].shape[1], weights[0].shape[-1]
    zeros = lambda *shape: torch.zeros(1, *shape, dtype=torch.float64)
    return FastWeightMemory(
        *(w.clone() for w in weights),
        *(w.norm(dim=-1, keepdim=True) for w in weights),
        *([torch.zeros_like(w) for w in weights] if momentum else [None] * 3),
        zeros(C - 1, H, dk),
        zeros(C - 1, H, dk),
        zeros(C - 1, H, 3),
        zeros(C - 1, H) if momentum else None,
    )


def rows_from(inputs: list[Tensor | None], starts: list[int], length: int) -> list[Tensor | None]:
    """Tokens starts[b] .. starts[b] + length of every row b."""
    return [None if x is None else torch.stack([x[b, s : s + length] for b, s in enumerate(starts)]) for x in inputs]


@pytest.mark.parametrize("optimiser", OPTIMISERS, ids=["sgd", "momentum", "muon", "momentum+muon"])
def test_chunkwise_fast_weights_from_rows_at_different_positions_equal_the_direct_recurrence(optimiser):
    """Rows whose memories sit at different positions (partly filled chunks) are read together in one call."""
    H, dk, C, T, rest = 2, 4, 6, 29, 14
    use_muon, momentum = optimiser["use_muon"], optimiser["use_momentum"]
    muon = Muon(None) if use_muon else None
    g = torch.Generator().manual_seed(3)
    q, k, v = (F.normalize(torch.randn(3, T, H, dk, generator=g, dtype=torch.float64), dim=-1) for _ in range(3))
    lr = torch.rand(3, T, H, 3, generator=g, dtype=torch.float64)
    gate = torch.rand(3, T, H, generator=g, dtype=torch.float64) if momentum else None
    inputs = [q, k, v, lr, gate]
    weights = random_fast_weights(B=1, H=H, dk=dk, dh=3)
    starts = [0, 4, 13]  # row b has read its first starts[b] tokens already

    def read_alone(b: int, length: int) -> FastWeightMemory:
        """The memory after the first `length` tokens of row b, read in one call from the start."""
        memory = empty_memory(weights, C, momentum)
        if length == 0:
            return memory
        prefix = [None if x is None else x[b : b + 1, :length] for x in inputs]
        return chunk_fast_weights(*prefix, memory, torch.tensor([0]), chunk_size=C, muon=muon)[1]

    memory = FastWeightMemory.cat([read_alone(b, s) for b, s in enumerate(starts)])
    query = StateQuery(torch.tensor([2, 0, 1, 1]), torch.tensor([0, 14, 2, 9]))
    new = rows_from(inputs, starts, rest)
    o, final, at_query = chunk_fast_weights(*new, memory, torch.tensor(starts), chunk_size=C, muon=muon, query=query)
    for b, s in enumerate(starts):
        expected = reference_fast_weights(q[b], k[b], v[b], lr[b], None if gate is None else gate[b], weights, C, use_muon)
        assert torch.allclose(o[b], expected[s : s + rest], **TOL), b
    # the memory after n more tokens equals reading everything up to there in one call
    for i, (b, n) in enumerate(zip(query.rows.tolist(), query.lengths.tolist())):
        assert states_close(at_query.index([i]), read_alone(b, starts[b] + n)), (b, n)
    # and one token at a time gives the same
    position = torch.tensor(starts)
    for t in range(rest):
        token = [None if x is None else x[:, t] for x in new]
        o_t, memory = fast_weight_step(*token, memory, position, chunk_size=C, muon=muon)
        position = position + 1
        assert torch.allclose(o_t, o[:, t], **TOL), t
    assert states_close(memory, final)


# ----- sliding-window attention ----------------------------------------------------------------------


def test_window_attention_equals_dense_attention_with_the_band_mask():
    A, d, W, T = 2, 4, 7, 19
    g = torch.Generator().manual_seed(4)
    starts = torch.tensor([0, 3, 11])  # tokens each row has read before
    L = int(starts.max()) + T
    q, k, v = (torch.randn(3, L, A, d, generator=g, dtype=torch.float64) for _ in range(3))
    # dense: row b's token i attends to tokens j with i - W < j <= i
    i, j = torch.arange(L)[:, None], torch.arange(L)[None]
    band = (j <= i) & (j > i - W)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / d**0.5
    dense = torch.einsum("bhij,bjhd->bihd", scores.masked_fill(~band, float("-inf")).softmax(-1), v)

    def window_before(x, b, s):  # the W - 1 tokens before s, zeros before the sequence start
        return torch.cat([torch.zeros(W - 1, A, d, dtype=x.dtype), x[b, :s]])[s : s + W - 1]

    cache = WindowCache(*(torch.stack([window_before(x, b, int(s)) for b, s in enumerate(starts)]) for x in (k, v)))
    new = lambda x: rows_from([x], starts.tolist(), T)[0]
    query = StateQuery(torch.tensor([1, 0, 2]), torch.tensor([0, 5, 19]))
    o, final, at_query = window_attention(new(q), new(k), new(v), cache, starts, block_size=5, query=query)
    assert torch.allclose(o, new(dense), **TOL)
    for b, s in enumerate(starts.tolist()):
        assert torch.allclose(final.keys[b], window_before(k, b, s + T), **TOL)
    for m, (b, n) in enumerate(zip(query.rows.tolist(), query.lengths.tolist())):
        assert torch.allclose(at_query.values[m], window_before(v, b, int(starts[b]) + n), **TOL)
    # one token at a time
    position = starts
    for t in range(T):
        o_t, cache = window_attention_step(new(q)[:, t], new(k)[:, t], new(v)[:, t], cache, position)
        position = position + 1
        assert torch.allclose(o_t, o[:, t], **TOL)
    assert torch.allclose(cache.keys, final.keys, **TOL) and torch.allclose(cache.values, final.values, **TOL)


def test_window_attention_memory_is_linear_in_the_length():
    """Blockwise: the biggest score tensor is block x (block + W - 1), so the peak is a few [T, A, d] tensors
    (output, keys and values with the cache) at any length; one dense T x T score matrix would exceed that."""
    from refine_lm.memory import peak_memory_bytes

    A, d, W = 2, 8, 16
    start = torch.zeros(1, dtype=torch.long)
    for T in (256, 2048):
        q = torch.randn(1, T, A, d)
        cache = WindowCache(torch.zeros(1, W - 1, A, d), torch.zeros(1, W - 1, A, d))
        with torch.no_grad():
            peak, _ = peak_memory_bytes(lambda q=q, cache=cache: window_attention(q, q, q, cache, start, block_size=64))
        assert peak <= 6 * q.numel() * 4, (T, peak)


# ----- states at positions, batched from different positions ------------------------------------------


def test_rollouts_from_different_positions_batched_together():
    """States at several positions of several sequences, fanned out and continued as one batch (teacher-forced
    and decoded), equal re-reading each prefix + continuation alone: rows cross chunk boundaries at different steps."""
    model = lact()  # chunk 8, window 12
    ids = random_ids(2, 40)
    positions = torch.tensor([[3, 8, 21], [0, 15, 33]])
    out = model(ids, state_positions=positions)
    states = out.position_states.repeat_interleave(2)  # 12 rows
    continuation = random_ids(12, 11, seed=5)
    batched = model(continuation, state=states)
    rows = [(b, int(p)) for b in range(2) for p in positions[b] for _ in range(2)]
    for r, (b, p) in enumerate(rows):
        alone = model(torch.cat([ids[b, :p], continuation[r]])[None])
        assert torch.allclose(batched.logits[r], alone.logits[0, p:], **TOL), (b, p)
        assert states_close(batched.state.index([r]), alone.state), (b, p)
    state = states
    for t in range(11):
        hidden, state = model.step(continuation[:, t], state)
        assert torch.allclose(model.lm_head(hidden), batched.logits[:, t], **TOL)
    assert states_close(state, batched.state)


def test_gradient_through_states_at_different_positions_equals_rerun():
    ids = random_ids(2, 30)
    positions = torch.tensor([[7, 19], [12, 24]])
    continuation = random_ids(4, 10, seed=6)  # from 19 and 24 it crosses the boundaries at 24 and 32

    fast = lact()
    out = fast(ids, state_positions=positions, return_logits=False)
    loss_fast = fast(continuation, labels=continuation, state=out.position_states, return_logits=False).loss * 4
    loss_fast.backward()

    slow = lact()
    loss_slow = 0
    for r, (b, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        prefix = slow(ids[b : b + 1, : positions[b, j]], return_logits=False).state
        row = continuation[r : r + 1]
        loss_slow = loss_slow + slow(row, labels=row, state=prefix, return_logits=False).loss
    loss_slow.backward()

    assert torch.allclose(loss_fast, loss_slow, **TOL)
    for (name, a), (_, b) in zip(fast.named_parameters(), slow.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-10, rtol=1e-8), name


def test_bf16_autocast_keeps_fast_weights_in_fp32():
    model = lact(dtype=torch.float32)
    ids = random_ids(2, 25)
    reference = model(ids, labels=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
        assert model.model.layers[0].attn.qkv(torch.randn(1, 64)).dtype == torch.bfloat16
        _, state = model.step(ids[:, 0], out.state)
    for layer in (*out.state.layers, *state.layers):
        assert layer.fast.w0.dtype == layer.fast.pending_k.dtype == layer.window.keys.dtype == torch.float32
    assert torch.allclose(out.loss.float(), reference.loss, atol=0.05)
    out.loss.backward()
    assert model.model.layers[0].attn.w1.grad is not None


# ----- configs and checkpoints -----------------------------------------------------------------------


def test_760m_parameter_count():
    with torch.device("meta"):
        model = LaCTForCausalLM(build_config("lact", "760m"))
    # "760M" in the paper; 797.6M counting both (untied) embedding matrices, 748.5M without the LM head
    assert sum(p.numel() for p in model.parameters()) == 797_625_312
    assert model.config.model_type == "lact_swiglu"
    layer = model.model.layers[0].attn
    assert (layer.head_dim, layer.fw_head_dim, layer.chunk_size, layer.window_size) == (64, 384, 2048, 2048)


def test_unsupported_options_are_refused():
    with pytest.raises(ValueError, match="ttt_prenorm"):
        LaCTForCausalLM(build_config("lact", "tiny", ttt_prenorm=True))
    with pytest.raises(ValueError, match="lr_dim"):
        LaCTForCausalLM(build_config("lact", "tiny", lr_dim=2))
    with pytest.raises(ValueError, match="fla has no LaCT"):
        lact().set_backend("fla")(random_ids(1, 4))
    with pytest.raises(ValueError, match="only for lact"):
        build_config("delta_net", "760m")


# config.json of a tiny model as lact_llm writes it (fields of its 760M config; flame/transformers extras)
LACT_LLM_CONFIG = {
    "architectures": ["LaCTForCausalLM"],
    "attention_bias": False,
    "attn_qk_norm": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "fuse_cross_entropy": True,
    "fuse_norm": True,
    "fw_init_gain": 0.5,
    "hidden_act": "swish",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "inter_multi": 1,
    "lact_chunk_size": 16,
    "learnable_ttt_scale": True,
    "lr_dim": 1,
    "lr_parameterization": "mamba",
    "max_position_embeddings": 32768,
    "model_type": "lact_swiglu",
    "norm_eps": 1e-06,
    "num_attn_heads": 4,
    "num_hidden_layers": 2,
    "num_lact_heads": 2,
    "qkv_bias": False,
    "qkv_silu": True,
    "rope_theta": 1000000,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.3",
    "ttt_loss_type": "dot_product",
    "use_cache": True,
    "use_momentum": True,
    "use_muon": True,
    "vocab_size": 512,
    "w0_w2_low_rank": 8,
    "window_size": 16,
}


def lact_llm_tensors(hidden=64, layers=2, vocab=512, fw_heads=2, rank=8, intermediate=256) -> dict[str, torch.Tensor]:
    """Tensor names and shapes of a lact_llm checkpoint with q/k norms, low-rank w0/w2, momentum and TTT scale."""
    g = torch.Generator().manual_seed(0)
    dk = hidden // fw_heads
    shapes = {"model.embeddings.weight": (vocab, hidden), "model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "attn_norm.weight": (hidden,),
            p + "attn.qkv.weight": (3 * hidden, hidden),
            p + "attn.q_norm.weight": (hidden,),
            p + "attn.k_norm.weight": (hidden,),
            p + "attn.o_proj.weight": (hidden, hidden),
            p + "attn.w0.w_left": (fw_heads, dk, rank),
            p + "attn.w0.w_right": (fw_heads, rank, dk),
            p + "attn.w2.w_left": (fw_heads, dk, rank),
            p + "attn.w2.w_right": (fw_heads, rank, dk),
            p + "attn.w1": (fw_heads, dk, dk),
            p + "attn.lr_proj.weight": (3 * fw_heads, hidden),
            p + "attn.lr_proj.bias": (3 * fw_heads,),
            p + "attn.qk_scale": (hidden, 2),
            p + "attn.qk_offset": (hidden, 2),
            p + "attn.ttt_scale_proj.weight": (fw_heads, hidden),
            p + "attn.ttt_scale_proj.bias": (fw_heads,),
            p + "attn.ttt_norm.weight": (dk,),
            p + "attn.momentum_proj.0.weight": (fw_heads, hidden),
            p + "attn.momentum_proj.0.bias": (fw_heads,),
            p + "mlp_norm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
        }
    return {name: (torch.randn(shape, generator=g) * 0.1).to(torch.bfloat16) for name, shape in shapes.items()}


def test_lact_llm_directory_loads_unchanged(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LACT_LLM_CONFIG, indent=2))
    tensors = lact_llm_tensors()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})

    model, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(model, LaCTForCausalLM) and isinstance(model.config, LaCTConfig)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    params = dict(model.named_parameters())
    assert set(params) == set(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(params[name].detach().to(torch.bfloat16), tensor), name
    model = load_model(tmp_path, dtype=torch.float64)  # the project's loader
    assert model.model.layers[0].attn.chunk_size == 16 and model.model.layers[1].attn.attn_qk_norm
    ids = random_ids(2, 40)
    out = model(ids, labels=ids)
    assert torch.isfinite(out.loss)
    decoded, _ = decode_from(model, ids, 9)
    assert torch.allclose(decoded, out.logits[:, 8:39], **TOL)


def test_no_v_silu_leaves_the_fast_values_linear_as_lact_llm_does():
    """lact_llm: ``no_v_silu`` skips SiLU on the fast-weight v even when ``qkv_silu`` is set (its 760M configs)."""
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(0))
    plain = tiny_model("lact")
    linear_v = tiny_model("lact", no_v_silu=True)
    linear_v.load_state_dict(plain.state_dict())
    assert not torch.allclose(plain(ids).logits, linear_v(ids).logits)
    mixer = linear_v.model.layers[0].attn
    assert mixer.qkv_silu and not mixer.v_silu
    assert not tiny_model("lact", qkv_silu=False, no_v_silu=False).model.layers[0].attn.v_silu


def lact_llm_newton_schulz(g: Tensor) -> Tensor:
    """lact_llm's ``zeropower_via_newtonschulz5`` as it computes it: cast to bf16 first, every step in bf16."""
    x = g.bfloat16()
    tall = g.shape[-2] > g.shape[-1]
    x = x.transpose(-1, -2) if tall else x
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for a, b, c in NEWTON_SCHULZ_COEFFICIENTS:
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.transpose(-1, -2) if tall else x).float()


def test_muon_orthogonalises_in_bf16_like_lact_llm_and_in_fp32_when_asked():
    g = torch.Generator().manual_seed(4)
    grads = (torch.randn(2, 2, 12, 8, generator=g), torch.randn(2, 2, 8, 12, generator=g), torch.randn(2, 2, 12, 8, generator=g))
    for got, grad in zip(Muon()(grads), grads):
        assert got.dtype == torch.float32 and torch.equal(got, lact_llm_newton_schulz(grad))
    exact = Muon(None)(grads)
    assert all(torch.equal(e, newton_schulz(grad)) for e, grad in zip(exact, grads))
    assert max((a - b).abs().max() for a, b in zip(Muon()(grads), exact)) > 1e-3  # bf16 is not a rounding detail


def test_fused_kernel_muon_orthogonalises_w0_and_w2_as_one_matrix():
    """lact_llm's fused path keeps w0 and w2 stacked as ``[w0; w2]`` and runs Newton-Schulz on their joint update."""
    g = torch.Generator().manual_seed(5)
    g0, g1, g2 = (torch.randn(1, 2, *shape, generator=g) for shape in ((12, 8), (8, 12), (12, 8)))
    j0, j1, j2 = Muon(None, joint_w0_w2=True)((g0, g1, g2))
    joint = newton_schulz(torch.cat([g0, g2], dim=-2))
    assert torch.equal(torch.cat([j0, j2], dim=-2), joint) and torch.equal(j1, newton_schulz(g1))
    assert not torch.allclose(j0, newton_schulz(g0), atol=1e-3)

    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(0))
    apart = tiny_model("lact", use_muon=True, lact_chunk_size=8)
    fused = tiny_model("lact", use_muon=True, lact_chunk_size=8, use_fused_kernel=True)
    fused.load_state_dict(apart.state_dict())
    assert fused.model.layers[0].attn.muon.joint_w0_w2
    assert not torch.allclose(apart(ids).logits, fused(ids).logits, atol=1e-4)


def test_newton_schulz_dtype_defaults_to_lact_llm_and_the_shipped_base_keeps_fp32():
    assert LaCTConfig().newton_schulz_dtype == "bfloat16"
    lact_llm_like = tiny_model("lact", use_muon=True, newton_schulz_dtype="bfloat16")
    assert lact_llm_like.model.layers[0].attn.muon.dtype == torch.bfloat16
    assert build_config("lact", "small").newton_schulz_dtype == "bfloat16"
    shipped = json.loads((Path(__file__).parents[1] / "bases" / "lact" / "config.json").read_text())
    assert shipped["use_muon"] and shipped["newton_schulz_dtype"] == "float32"  # the dtype it was trained with
    with pytest.raises(ValueError, match="newton_schulz_dtype"):
        tiny_model("lact", use_muon=True, newton_schulz_dtype="float16")


def test_ttt_scale_zero_init_starts_with_the_fast_weight_branch_silent():
    """With ``ttt_scale_zero_init`` the fast-weight branch adds nothing at initialisation (SiLU(0) = 0): the
    logits do not depend on its weights. By default (lact_llm's init) they do."""
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(0))

    def logits_with_other_fast_weights(model):
        with torch.no_grad():
            before = model(ids).logits
            for layer in model.model.layers:
                layer.attn.w1.mul_(3.0)
            return before, model(ids).logits

    silent = lact(ttt_scale_zero_init=True)
    assert all((layer.attn.ttt_scale_proj.weight == 0).all() for layer in silent.model.layers)
    assert torch.equal(*logits_with_other_fast_weights(silent))
    assert not torch.allclose(*logits_with_other_fast_weights(lact()))


# ----- the short-convolution variant ------------------------------------------------------------------


def lact_with_conv(**overrides) -> LaCTForCausalLM:
    """The ``use_short_conv`` variant with every tap of its convolutions random (it starts as the identity)."""
    model = lact(use_short_conv=True, **overrides)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.attn.qkv_conv1d.weight.normal_(generator=torch.Generator().manual_seed(7))
    return model


def test_short_conv_starts_as_the_plain_layer_and_its_taps_reach_back():
    ids = random_ids(2, 30)
    variant, plain = lact(use_short_conv=True), lact()
    missing = plain.load_state_dict(variant.state_dict(), strict=False)
    assert all("qkv_conv1d" in name for name in missing.unexpected_keys) and not missing.missing_keys
    assert torch.allclose(variant(ids).logits, plain(ids).logits, **TOL)  # the identity convolution at first
    # with its taps set, a token reaches the next conv_size - 1 tokens' q, k, v and no others
    attn = lact_with_conv().model.layers[0].attn
    x = torch.randn(1, 20, 64, dtype=torch.float64)
    changed = x.clone()
    changed[:, 9] += 1.0
    y, _ = causal_conv1d(attn.qkv(x), attn.qkv_conv1d.weight[:, 0])
    y_changed, _ = causal_conv1d(attn.qkv(changed), attn.qkv_conv1d.weight[:, 0])
    assert ((y - y_changed).abs().amax(dim=(0, 2)) > 0).nonzero()[:, 0].tolist() == [9, 10, 11, 12]


@pytest.mark.parametrize("chunk, window", [(8, 3), (5, 17)])
def test_short_conv_chunkwise_equals_stepwise_and_decoding(chunk, window):
    model = lact_with_conv(lact_chunk_size=chunk, window_size=window)
    ids = random_ids(2, 37)
    chunked = model(ids)
    stepped = model.set_backend("naive")(ids)
    assert torch.allclose(chunked.logits, stepped.logits, **TOL)
    assert states_close(chunked.state, stepped.state)
    model.set_backend("chunk")
    for p in (1, 11):
        decoded, state = decode_from(model, ids, p)
        assert torch.allclose(decoded, chunked.logits[:, p - 1 : 36], **TOL), p
        assert states_close(state, chunked.state), p


def test_short_conv_states_at_positions_continue_like_rereading_the_prefix():
    model = lact_with_conv()
    ids = random_ids(2, 30)
    positions = torch.tensor([[2, 17], [9, 25]])
    out = model(ids, state_positions=positions)
    continuation = random_ids(4, 9, seed=4)
    batched = model(continuation, state=out.position_states)
    rows = [(b, int(p)) for b in range(2) for p in positions[b]]
    for r, (b, p) in enumerate(rows):
        alone = model(torch.cat([ids[b, :p], continuation[r]])[None])
        assert torch.allclose(batched.logits[r], alone.logits[0, p:], **TOL), (b, p)
        assert states_close(batched.state.index([r]), alone.state), (b, p)


def test_short_conv_padded_batches_read_each_row_alone():
    model = lact_with_conv()
    ids = random_ids(2, 21)
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # row 0 left-padded
    out = model(ids, attention_mask=mask)
    alone = model(ids[:1, 6:])
    assert torch.allclose(out.logits[0, 6:], alone.logits[0], **TOL)
    assert states_close(out.state.index([0]), alone.state)
