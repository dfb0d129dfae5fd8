"""The optional flash-linear-attention kernel backend against the torch path (needs CUDA + fla)."""

from __future__ import annotations

import pytest
import torch

from refine_lm.ops.fla_backend import fla_installed

from .conftest import random_ids, tiny_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and fla_installed()), reason="needs CUDA and flash-linear-attention"),
]


@pytest.mark.parametrize("arch", ["delta_net", "gated_deltanet"])
def test_fla_kernels_match_torch_chunkwise(arch):
    """bf16 kernels vs the fp32 torch path: logits within 5e-2, final states within 5e-2 (relative to their scale)."""
    model = tiny_model(arch, dtype=torch.float32).cuda()
    ids = random_ids(2, 300).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = model.set_backend("chunk", 64)(ids)
        fast = model.set_backend("fla")(ids)
    assert torch.allclose(fast.logits.float(), reference.logits.float(), atol=5e-2, rtol=5e-2)
    for a, b in zip(fast.state.layers, reference.state.layers):
        scale = b.recurrent.abs().max()
        assert (a.recurrent - b.recurrent).abs().max() <= 5e-2 * scale
