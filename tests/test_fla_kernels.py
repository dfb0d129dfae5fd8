"""flash-linear-attention's Triton kernels against the torch chunk path, on CPU under Triton's interpreter.

``TRITON_INTERPRET=1`` (set by conftest.py when there is no CUDA) runs the real kernel code on CPU
tensors, slowly, so these use tiny sizes and fp32 (the interpreter's bf16 dot products are wrong).
Run them alone with ``pytest -m fla``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refine_lm.ops.delta_rule import chunk_delta_rule
from refine_lm.ops.fla_backend import fla_delta_rule, fla_installed, fla_unavailable
from refine_lm.refine.objective import RefineConfig, RefineMicroBatch, RefineObjective
from refine_lm.state import StateQuery
from refine_lm.step_random import StepRandom

from .conftest import random_ids, tiny_model

pytestmark = [
    pytest.mark.fla,
    pytest.mark.skipif(not fla_installed(), reason="pip install -e '.[fla]'"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA kernels are tested in test_fla_backend.py"),
]
TOL = dict(atol=2e-4, rtol=2e-4)


def inputs(gated: bool, B=2, T=45, H=2, dk=16, dv=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, dk, generator=g), dim=-1)
    k = F.normalize(torch.randn(B, T, H, dk, generator=g), dim=-1)
    v = torch.randn(B, T, H, dv, generator=g)
    beta = torch.rand(B, T, H, generator=g)
    decay = -torch.rand(B, T, H, generator=g) * 0.2 if gated else None
    state = torch.randn(B, H, dk, dv, generator=g) * 0.1
    return [x if x is None else x.requires_grad_(True) for x in (q, k, v, beta, decay, state)]


@pytest.mark.parametrize("gated", [False, True], ids=["delta_net", "gated_deltanet"])
def test_kernels_serve_state_queries_with_every_gradient(gated):
    """Queries at several positions of rows at different places (one at 0, one at the end, two in one row):
    outputs, final states, states at the queries and the gradients to every input and the initial state."""
    query = StateQuery(torch.tensor([0, 1, 1, 0, 1]), torch.tensor([17, 3, 30, 0, 45]))
    results = []
    for backend in ("chunk", "fla"):
        q, k, v, beta, decay, state = inputs(gated)
        if backend == "chunk":
            o, final, at = chunk_delta_rule(q, k, v, beta, decay, initial_state=state, query=query, chunk_size=16)
        else:
            o, final, at = fla_delta_rule(q, k, v, beta, decay, scale=16**-0.5, initial_state=state, query=query)
        g = torch.Generator().manual_seed(9)
        loss = sum((x * torch.randn(x.shape, generator=g)).sum() for x in (o, final, at))
        leaves = {n: x for n, x in zip(("q", "k", "v", "beta", "decay", "state"), (q, k, v, beta, decay, state)) if x is not None}
        results.append((o, final, at, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))))
    (o1, f1, a1, g1), (o2, f2, a2, g2) = results
    assert torch.allclose(o2, o1, **TOL) and torch.allclose(f2, f1, **TOL) and torch.allclose(a2, a1, **TOL)
    for name in g1:
        assert torch.allclose(g2[name], g1[name], **TOL), name


def test_a_refine_step_with_the_kernels_equals_the_torch_path():
    """Cached rollouts (the prefill asks for the states at the rollout starts), the REFINE loss and every parameter
    gradient, through the states at the queries, with backend fla and backend chunk."""
    cfg = RefineConfig(num_chunks=2, rollout_len=3, rollouts_per_position=1, margin=3, snapshot_stride=5, rollout_mode="cached")
    ids = random_ids(2, 40)
    runs = []
    for backend in ("chunk", "fla"):
        model = tiny_model("gated_deltanet", dtype=torch.float32).set_backend(backend, 16)
        objective = RefineObjective(cfg, micro_batch_size=2)
        batch = objective.rollout(model, ids, StepRandom(1, 0))
        loss, _ = objective.loss(model, RefineMicroBatch(batch, ntp_tokens=2 * 39, rollout_tokens=batch.tokens.numel()))
        loss.backward()
        runs.append((batch, loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (a, loss_a, grads_a), (b, loss_b, grads_b) = runs
    assert torch.equal(a.starts, b.starts) and torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.old_logprobs, b.old_logprobs, **TOL) and torch.allclose(loss_a, loss_b, **TOL)
    for name, grad in grads_a.items():
        assert torch.allclose(grads_b[name], grad, atol=1e-4, rtol=1e-3), name


def test_prefill_with_the_kernels_then_decode():
    ids = random_ids(2, 30)
    reference = tiny_model("delta_net", dtype=torch.float32)(ids)
    model = tiny_model("delta_net", dtype=torch.float32).set_backend("fla")
    prefill = model(ids[:, :20])
    assert torch.allclose(prefill.logits, reference.logits[:, :20], **TOL)
    state, logits = prefill.state, []
    for t in range(20, 30):
        hidden, state = model.step(ids[:, t], state)
        logits.append(model.lm_head(hidden))
    assert torch.allclose(torch.stack(logits, 1), reference.logits[:, 20:], **TOL)


def test_rows_of_different_lengths_read_with_the_kernels():
    """Left-padded rows: the model asks for each row's state after its own length (a state query per row)."""
    ids = random_ids(2, 24)
    mask = torch.ones(2, 24, dtype=torch.long)
    mask[0, :9] = 0
    outs = [
        tiny_model("gated_deltanet", dtype=torch.float32).set_backend(backend)(ids, attention_mask=mask)
        for backend in ("chunk", "fla")
    ]
    real = mask.bool()
    assert torch.allclose(outs[1].logits[real], outs[0].logits[real], **TOL)
    for a, b in zip(outs[1].state.layers, outs[0].state.layers):
        assert torch.allclose(a.recurrent, b.recurrent, **TOL)


def test_backend_fla_that_cannot_run_is_an_error_and_auto_says_why():
    model = tiny_model("delta_net").set_backend("fla")  # fp64: beyond the kernels
    with pytest.raises(RuntimeError, match=r"backend 'fla' cannot run here: .*fp64"):
        model(random_ids(1, 8))


def test_why_the_kernels_cannot_run_is_said():
    assert "fp64" in fla_unavailable(torch.zeros(1, dtype=torch.float64))
    assert fla_unavailable(torch.zeros(1)) is None  # CPU under the interpreter
    assert "CUDA" in fla_unavailable(torch.zeros(1), auto=True)  # backend auto uses the interpreter never


@pytest.mark.parametrize(
    "capability, triton_version, has_tilelang, refused",
    [
        ((9, 0), "3.6.0", False, True),  # an H100 / H200 with the Triton of torch 2.11: fla-core refuses the backward
        ((9, 0), "3.7.1", False, False),
        ((9, 0), "3.3.1", False, False),
        ((9, 0), "3.6.0", True, False),  # tilelang supplies that kernel
        ((8, 0), "3.6.0", False, False),  # an A100
    ],
)
def test_gated_backward_defect_of_hopper_with_some_tritons_is_named(capability, triton_version, has_tilelang, refused):
    from refine_lm.ops.fla_backend import gated_backward_defect

    why = gated_backward_defect(capability, triton_version, has_tilelang)
    assert (why is not None) == refused
    if refused:
        assert f"Triton {triton_version}" in why and "tilelang" in why
