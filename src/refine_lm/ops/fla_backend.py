"""Optional flash-linear-attention Triton kernels for the delta rule (CUDA only).

Used when a model's backend is ``"fla"`` (or ``"auto"`` on a GPU with ``flash-linear-attention``
installed). The kernels compute in bf16 and return the final state only, so calls that ask for
mid-sequence states (:class:`~refine_lm.state.StateQuery`) fall back to the torch chunkwise form.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect

import torch
from torch import Tensor


@functools.cache
def fla_installed() -> bool:
    return importlib.util.find_spec("fla") is not None


def fla_usable(device: torch.device) -> bool:
    return device.type == "cuda" and fla_installed()


def fla_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None,
    *,
    scale: float,
    initial_state: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`~refine_lm.ops.delta_rule.chunk_delta_rule` without queries.

    q and k must already be activated and normalised (we do not use the kernels' in-kernel
    L2 norm, so both backends see identical inputs).
    """
    if not fla_installed():
        raise RuntimeError("backend 'fla' needs flash-linear-attention: pip install flash-linear-attention")
    from fla.ops.delta_rule import chunk_delta_rule
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    half = torch.bfloat16
    q, k, v = (x.to(half).contiguous() for x in (q, k, v))
    beta = beta.to(half).contiguous()
    state = None if initial_state is None else initial_state.float().contiguous()
    if g is None:
        o, final = chunk_delta_rule(q, k, v, beta, scale=scale, initial_state=state, output_final_state=True)
    else:
        extra = {}
        if "state_v_first" in inspect.signature(chunk_gated_delta_rule).parameters:
            extra["state_v_first"] = False  # our states are [B, H, d_k, d_v]
        o, final = chunk_gated_delta_rule(
            q, k, v, g.float().contiguous(), beta, scale=scale, initial_state=state, output_final_state=True, **extra
        )
    return o.float(), final.float()
