"""Every architecture (DeltaNet, Gated DeltaNet, LaCT): the execution paths agree, and the state API is exact."""

from __future__ import annotations

import pytest
import torch

from refine_lm import DeltaNetConfig, DeltaNetForCausalLM
from refine_lm.ops.lm_head import token_logprobs

from .conftest import random_ids, state_leaves, states_close, tiny_model

TOL = dict(atol=1e-10, rtol=0)


def test_delta_net_1_3b_parameter_count():
    with torch.device("meta"):
        model = DeltaNetForCausalLM(DeltaNetConfig())  # the defaults are fla-hub/delta_net-1.3B-100B
    assert sum(p.numel() for p in model.parameters()) == 1_365_677_056


@pytest.mark.parametrize("length", [1, 5, 8, 21, 40])
def test_chunkwise_equals_naive_outputs_and_state(arch, length):
    model = tiny_model(arch)
    ids = random_ids(2, length)
    prefix = random_ids(2, 6, seed=1)
    initial = model(prefix).state  # a non-trivial initial state (recurrent and conv)
    chunk = model(ids, state=initial)
    naive = model.set_backend("naive")(ids, state=initial)
    assert torch.allclose(chunk.last_hidden_state, naive.last_hidden_state, **TOL)
    assert torch.allclose(chunk.logits, naive.logits, **TOL)
    assert states_close(chunk.state, naive.state)


def test_chunkwise_gradients_equal_naive(arch):
    grads = {}
    for backend in ("chunk", "naive"):
        model = tiny_model(arch).set_backend(backend, chunk_size=8)
        # a non-trivial initial state, as leaves: gradients reach it too
        prefix = model.set_backend("chunk")(random_ids(2, 6, seed=3), return_logits=False).state
        initial = prefix.map(lambda t: t.detach().clone().requires_grad_(t.is_floating_point()))
        model.set_backend(backend, chunk_size=8)
        ids = random_ids(2, 27)
        out = model(ids, labels=ids, state=initial, return_logits=False)
        final = sum(t.pow(2).sum() for _, t in state_leaves(out.state) if t is not None and t.is_floating_point())
        (out.loss + 0.1 * final).backward()
        # (LaCT's learned initial fast weights get none: the initial state replaces them)
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads[backend]["initial"] = torch.cat(
            [
                (t.grad if t.grad is not None else torch.zeros_like(t)).flatten()
                for _, t in state_leaves(initial)
                if t is not None and t.is_floating_point()
            ]
        )
    assert grads["chunk"].keys() == grads["naive"].keys()
    for name in grads["chunk"]:
        assert torch.allclose(grads["chunk"][name], grads["naive"][name], atol=1e-10, rtol=1e-8), name


def test_prefill_then_decode_reproduces_full_forward(arch):
    model = tiny_model(arch)
    ids = random_ids(3, 30)
    full = model(ids).logits
    split_points = torch.randint(1, 30, (4,), generator=torch.Generator().manual_seed(1)).tolist()
    for p in [1, *split_points]:
        prefill = model(ids[:, :p], return_hidden="last")
        state, hidden = prefill.state, prefill.last_hidden_state[:, 0]
        logits = [model.lm_head(hidden)]
        for t in range(p, 30):
            hidden, state = model.step(ids[:, t], state)
            logits.append(model.lm_head(hidden))
        decoded = torch.stack(logits[:-1], dim=1)
        assert torch.allclose(decoded, full[:, p - 1 : 29], **TOL)


def test_state_at_position_equals_prefix_final_state(arch):
    model = tiny_model(arch)
    model.segment_len = 16  # positions fall into different segments and chunks
    ids = random_ids(2, 40)
    positions = torch.tensor([[0, 7, 16, 33], [40, 1, 8, 25]])
    out = model(ids, state_positions=positions)
    assert out.position_states.batch_size == 8
    for b in range(2):
        for j, p in enumerate(positions[b].tolist()):
            got = out.position_states.index([b * 4 + j])
            if p == 0:
                expected = model.init_state(1)
            else:
                expected = model(ids[b : b + 1, :p]).state
            assert states_close(got, expected), (b, p)


def test_gradient_through_position_state_equals_rerun(arch):
    """A loss on a continuation read from the state at p back-propagates into the prefix exactly as a re-run does."""
    ids = random_ids(2, 24)
    continuation = random_ids(2, 5, seed=7)
    p = torch.tensor([[11], [19]])

    def continuation_loss(model, state, rows):
        out = model(continuation[rows], labels=continuation[rows], state=state, return_logits=False)
        return out.loss

    fast = tiny_model(arch)
    out = fast(ids, state_positions=p, return_logits=False)
    loss_fast = sum(continuation_loss(fast, out.position_states.index([b]), [b]) for b in range(2))
    loss_fast.backward()

    slow = tiny_model(arch)
    loss_slow = 0
    for b in range(2):
        prefix_state = slow(ids[b : b + 1, : p[b, 0]], return_logits=False).state
        loss_slow = loss_slow + continuation_loss(slow, prefix_state, [b])
    loss_slow.backward()

    assert torch.allclose(loss_fast, loss_slow, **TOL)
    for (name, a), (_, b) in zip(fast.named_parameters(), slow.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-10, rtol=1e-8), name


def test_segments_do_not_change_results(arch):
    model = tiny_model(arch)
    ids = random_ids(2, 45)
    whole = model(ids, labels=ids)
    model.segment_len = 7
    cut = model(ids, labels=ids)
    assert torch.allclose(whole.logits, cut.logits, **TOL)
    assert torch.allclose(whole.loss, cut.loss, **TOL)
    assert states_close(whole.state, cut.state)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_never_leaks_into_the_state(arch, side):
    model = tiny_model(arch)
    model.segment_len = 8
    lengths = [13, 20, 5]
    rows = [random_ids(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    L, pad = max(lengths), 0
    ids = torch.full((3, L), pad)
    mask = torch.zeros(3, L, dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(L - len(row), L) if side == "left" else slice(0, len(row))
        ids[b, cols], mask[b, cols] = row, 1
    batch = model(
        ids,
        attention_mask=mask,
        labels=ids,
        state_positions=torch.tensor([[L - 5], [L - 3], [L - 1]]) if side == "left" else None,
    )
    last = model(ids, attention_mask=mask, return_hidden="last")
    nll, count = 0.0, 0
    for b, row in enumerate(rows):
        alone = model(row[None], labels=row[None])
        cols = slice(L - len(row), L) if side == "left" else slice(0, len(row))
        assert torch.allclose(batch.logits[b, cols], alone.logits[0], **TOL)
        assert states_close(batch.state.index([b]), alone.state)
        assert torch.allclose(last.last_hidden_state[b, 0], alone.last_hidden_state[0, -1], **TOL)
        nll, count = nll + alone.loss * alone.num_tokens, count + alone.num_tokens
    assert batch.num_tokens == count  # padding is never counted in the loss
    assert torch.allclose(batch.loss, nll / count, **TOL)
    if side == "left":  # positions are column indices of the padded batch
        for b, col in enumerate([L - 5, L - 3, L - 1]):
            expected = model(rows[b][None, : col - (L - lengths[b])]).state
            assert states_close(batch.position_states.index([b]), expected)


def test_bad_attention_mask_and_positions_are_clear_errors(model):
    ids = random_ids(2, 6)
    with pytest.raises(ValueError, match="contiguous"):
        model(ids, attention_mask=torch.tensor([[1, 0, 1, 1, 1, 1], [1] * 6]))
    with pytest.raises(ValueError, match="no tokens"):
        model(ids, attention_mask=torch.tensor([[0] * 6, [1] * 6]))
    with pytest.raises(ValueError, match="outside the real tokens"):
        model(ids, state_positions=torch.tensor([[7], [2]]))
    with pytest.raises(TypeError, match="unexpected arguments"):
        model(ids, bogus=1)


def test_generate_greedy_matches_teacher_forcing(arch):
    model = tiny_model(arch)
    prompt = random_ids(2, 11)
    out = model.generate(prompt, max_new_tokens=6, return_logprobs=True, return_hidden=True, return_state=True)
    assert out.tokens.shape == (2, 6) and out.lengths.tolist() == [6, 6]
    full = model(torch.cat([prompt, out.tokens], 1))
    logits = full.logits[:, 10:16]
    assert torch.equal(out.tokens, logits.argmax(-1))
    assert torch.allclose(out.logprobs, logits.log_softmax(-1).gather(-1, out.tokens[..., None])[..., 0], **TOL)
    assert torch.allclose(out.hidden_states, full.last_hidden_state[:, 11:17], **TOL)
    assert states_close(out.state, full.state)


def test_generate_from_a_state_snapshot(arch):
    """Rollouts start from cached states: state + last hidden, fanned out with repeat_interleave."""
    model = tiny_model(arch)
    ids = random_ids(2, 20)
    out = model(ids, state_positions=torch.tensor([[8], [13]]))
    hidden = torch.stack([out.last_hidden_state[0, 7], out.last_hidden_state[1, 12]])
    fanned = out.position_states.repeat_interleave(3)
    gen = torch.Generator().manual_seed(0)
    rollouts = model.generate(
        state=fanned, last_hidden=hidden.repeat_interleave(3, 0), max_new_tokens=4, do_sample=True, generator=gen
    )
    assert rollouts.tokens.shape == (6, 4)
    greedy = model.generate(state=out.position_states, last_hidden=hidden, max_new_tokens=4)
    for b, p in enumerate([8, 13]):
        alone = model.generate(ids[b : b + 1, :p], max_new_tokens=4)
        assert torch.equal(greedy.tokens[b], alone.tokens[0])


def test_generate_batched_left_padding_matches_alone_and_stops_at_eos(arch):
    model = tiny_model(arch)
    prompts = [random_ids(1, n, seed=n)[0] for n in (4, 9)]
    ids = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, 9 - len(p) :], mask[b, 9 - len(p) :] = p, 1
    batch = model.generate(ids, mask, max_new_tokens=5)
    for b, p in enumerate(prompts):
        assert torch.equal(batch.tokens[b], model.generate(p[None], max_new_tokens=5).tokens[0])
    eos = int(batch.tokens[0, 2])
    stopped = model.generate(ids, mask, max_new_tokens=5, eos_token_id=eos, pad_token_id=511)
    first = batch.tokens[0].tolist().index(eos)
    assert int(stopped.lengths[0]) == first + 1
    assert torch.equal(stopped.tokens[0, : first + 1], batch.tokens[0, : first + 1])
    assert (stopped.tokens[0, first + 1 :] == 511).all()


def test_sampling_is_reproducible_with_a_generator(model):
    prompt = random_ids(4, 7)
    runs = [
        model.generate(prompt, max_new_tokens=8, do_sample=True, top_p=0.9, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].tokens, runs[1].tokens)


def test_sliced_loss_equals_full_cross_entropy(model):
    ids = random_ids(2, 33)
    model.logits_slice_len = 5
    out = model(ids, labels=ids)
    reference = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 512), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, reference, **TOL)
    logp = token_logprobs(out.last_hidden_state[:, :-1], model.lm_head.weight, ids[:, 1:], slice_len=4)
    assert torch.allclose(-logp.mean(), reference, **TOL)


@pytest.mark.parametrize("arch", ["delta_net", "gated_deltanet"])  # LaCT: tests/test_lact.py
def test_bf16_autocast_keeps_recurrence_in_fp32(arch):
    model = tiny_model(arch, dtype=torch.float32)
    ids = random_ids(2, 25)
    reference = model(ids, labels=ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
        assert model.model.layers[0].attn.q_proj(torch.randn(1, 64)).dtype == torch.bfloat16
    assert all(layer.recurrent.dtype == torch.float32 for layer in out.state.layers)
    assert torch.allclose(out.loss.float(), reference.loss, atol=0.05)
    out.loss.backward()  # and it trains
    assert model.lm_head.weight.grad is not None


@pytest.mark.parametrize("arch", ["delta_net", "gated_deltanet", "lact"])
def test_a_config_setting_the_architecture_lacks_is_refused_by_name(arch):
    from refine_lm.models.registry import build_config

    assert build_config(arch, "tiny").num_hidden_layers == 2
    with pytest.raises(ValueError, match="no config setting 'hidden_sise'"):
        build_config(arch, "tiny", hidden_sise=32)


def test_gated_deltanet_initial_forgetting_follows_the_time_step_range():
    import torch.nn.functional as F

    from refine_lm.models.registry import build_model

    def initial_time_steps(**overrides):
        model = build_model("gated_deltanet", "tiny", seed=0, **overrides)
        return torch.cat([F.softplus(layer.attn.dt_bias.detach()) for layer in model.model.layers])

    default = initial_time_steps()
    assert default.min() >= 1e-3 * 0.999 and default.max() <= 0.1 * 1.001  # fla's range
    slow = initial_time_steps(time_step_min=1e-5, time_step_max=1e-3)
    assert slow.min() >= 1e-5 * 0.999 and slow.max() <= 1e-3 * 1.001  # no floor above the range's low end
    with pytest.raises(ValueError, match="time_step_min <= time_step_max"):
        build_model("gated_deltanet", "tiny", time_step_min=0.1, time_step_max=1e-3)


def test_gated_deltanet_with_no_forgetting_and_no_output_gate_is_deltanet():
    """Gated DeltaNet's recurrence is DeltaNet's times a decay: with the decay at 1 (A -> 0) and no output gate,
    DeltaNet's weights give the same logits, which is what warm-starting one from the other relies on."""
    from refine_lm.models.registry import build_model

    deltanet = build_model("delta_net", "tiny", seed=0).eval()
    gated = build_model("gated_deltanet", "tiny", seed=1, num_heads=4, head_dim=16, expand_v=1, use_gate=False).eval()
    missing, unexpected = gated.load_state_dict(deltanet.state_dict(), strict=False)
    assert not unexpected and {name.split(".", 3)[-1] for name in missing} == {"attn.A_log", "attn.a_proj.weight", "attn.dt_bias"}
    for layer in gated.model.layers:
        layer.attn.A_log.data.fill_(-30.0)  # forgetting rate exp(A_log) * dt ~ 1e-14 per token
    ids = random_ids(2, 40, vocab=deltanet.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(gated(ids).logits, deltanet(ids).logits, atol=1e-5, rtol=1e-5)
