"""State objects: the generic operations every architecture's memory supports."""

from __future__ import annotations

import pytest
import torch

from refine_lm import DeltaRuleState, ModelState


def make_state(batch=3):
    layers = [DeltaRuleState(torch.arange(batch * 4.0).reshape(batch, 1, 2, 2), torch.ones(batch, 3, 5)) for _ in range(2)]
    return ModelState(layers)


def test_index_repeat_cat_clone_detach_to():
    state = make_state()
    assert state.batch_size == 3 and len(state) == 2
    picked = state.index(torch.tensor([2, 0, 0]))
    assert torch.equal(picked.layers[0].recurrent[0], state.layers[0].recurrent[2])
    fanned = state.repeat_interleave(2)
    assert fanned.batch_size == 6 and torch.equal(fanned.layers[1].recurrent[3], state.layers[1].recurrent[1])
    joined = ModelState.cat([state, picked])
    assert joined.batch_size == 6 and torch.equal(joined.layers[0].recurrent[3:], picked.layers[0].recurrent)
    cloned = state.clone()
    cloned.layers[0].recurrent += 1
    assert not torch.equal(cloned.layers[0].recurrent, state.layers[0].recurrent)
    grad_state = state.map(lambda t: t.clone().requires_grad_(True))
    assert not grad_state.detach().layers[0].recurrent.requires_grad
    moved = state.to(dtype=torch.float64)
    assert moved.layers[0].recurrent.dtype == torch.float64 and moved.device.type == "cpu"


def test_state_with_no_conv_and_mismatched_cat():
    a = DeltaRuleState(torch.zeros(1, 1, 2, 2))
    assert a.clone().conv is None
    with pytest.raises(ValueError, match="None in some"):
        DeltaRuleState.cat([a, DeltaRuleState(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 4))])
