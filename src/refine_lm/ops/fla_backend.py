"""Optional flash-linear-attention Triton kernels for the (gated) delta rule.

Used when a model's backend is ``"fla"`` (or ``"auto"`` where the kernels can run): on CUDA with
``fla-core`` installed, or on any device under Triton's interpreter (``TRITON_INTERPRET=1``, slow,
for tests). :func:`fla_delta_rule` has the contract of :func:`~refine_lm.ops.delta_rule.chunk_delta_rule`,
state queries included: each row's sequence is cut at its query lengths and the pieces are read in
rounds, round r reading the r-th piece of every row in one variable-length call (``cu_seqlens``)
whose initial states are the final states of round r - 1. The kernels differentiate through their
initial and final states, so gradients reach the parameters through the states at the queries.

Under the interpreter two things of the kernels are adapted at run time (nothing installed is edited):
every autotuned kernel keeps its first configuration (choosing one benchmarks on a GPU), and the
loop counter of the chunked state recurrence gets the ``.to(dtype)`` it calls, which a plain Python
``int`` lacks there.
"""

from __future__ import annotations

import builtins
import functools
import importlib.util
import logging
import os
import re
import sys

import torch
from torch import Tensor

from ..state import StateQuery

log = logging.getLogger(__name__)


@functools.cache
def fla_installed() -> bool:
    return importlib.util.find_spec("fla") is not None and importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton's interpreter is on (``TRITON_INTERPRET=1``): the kernels run on CPU tensors, slowly."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def fla_unavailable(x: Tensor, auto: bool = False, gated: bool = False) -> str | None:
    """Why the kernels cannot read ``x`` (None when they can). ``auto``: for backend ``auto``, which uses
    them on CUDA only (the interpreter is for tests that ask for backend ``fla``). ``gated``: the gated
    (Gated DeltaNet) kernels, whose backward some GPU and Triton pairs cannot run."""
    if not fla_installed():
        return "flash-linear-attention is not installed (pip install -e '.[fla]')"
    if x.device.type != "cuda" and (auto or not interpreting()):
        return f"the kernels need CUDA, the input is on {x.device.type}"
    if x.dtype == torch.float64:
        return "the kernels compute in fp32 at most, the input is fp64"
    if gated and x.device.type == "cuda" and torch.is_grad_enabled():
        import triton

        has_tilelang = importlib.util.find_spec("tilelang") is not None
        return gated_backward_defect(torch.cuda.get_device_capability(x.device), triton.__version__, has_tilelang)
    return None


def gated_backward_defect(capability: tuple[int, int], triton_version: str, has_tilelang: bool) -> str | None:
    """fla-core refuses the gated kernels' backward on Hopper (compute capability 9.x) with Triton 3.4.0 up
    to 3.7.0, which compile it to wrong results, unless tilelang provides that kernel; the forward is fine."""
    version = tuple(int(part) for part in re.findall(r"\d+", triton_version)[:3])
    if capability[0] != 9 or has_tilelang or not (3, 4, 0) <= version < (3, 7, 1):
        return None
    return (
        f"Triton {triton_version} compiles the gated kernels' backward wrongly on Hopper GPUs (fla-core refuses "
        "it): install triton>=3.7.1 or tilelang"
    )


@functools.cache
def say_once(message: str, level: int = logging.WARNING) -> None:
    """Log ``message`` the first time it comes up in this process."""
    log.log(level, message)


class _LoopIndex(int):
    """A loop counter of an interpreted kernel: ``i.to(tl.int64)`` as the compiled kernels allow it."""

    def to(self, dtype, **kwargs) -> _LoopIndex:
        return self


def _interpreted_range(*args):
    return (_LoopIndex(i) for i in builtins.range(*args))


@functools.cache
def _prepare_interpreter() -> None:
    import fla.ops.common.chunk_delta_h
    import fla.ops.delta_rule
    import fla.ops.gated_delta_rule
    from triton.runtime.autotuner import Autotuner

    for name, module in list(sys.modules.items()):
        if not name.startswith("fla."):
            continue
        for kernel in vars(module).values():
            for _ in range(4):  # heuristics / autotune / jit wrappers, outermost first
                if isinstance(kernel, Autotuner):
                    kernel.configs = kernel.configs[:1]
                kernel = getattr(kernel, "fn", None)
                if kernel is None:
                    break
    fla.ops.common.chunk_delta_h.range = _interpreted_range


def _kernel(q, k, v, beta, g, scale, initial_state, cu_seqlens) -> tuple[Tensor, Tensor]:
    """One kernel call: ``[1 or B, T, H, .]`` inputs, ``[N, H, d_k, d_v]`` initial states -> (o, final states)."""
    if g is None:
        if q.dtype == torch.float32:  # the public entry point refuses fp32, its autograd function does not
            from fla.ops.delta_rule.chunk import ChunkDeltaRuleFunction

            return ChunkDeltaRuleFunction.apply(q, k, v, beta, scale, initial_state, True, False, cu_seqlens, None, 64)
        from fla.ops.delta_rule import chunk_delta_rule

        return chunk_delta_rule(
            q, k, v, beta, scale=scale, initial_state=initial_state, output_final_state=True, cu_seqlens=cu_seqlens
        )
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    return chunk_gated_delta_rule(
        q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=True, cu_seqlens=cu_seqlens
    )


def fla_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None,
    *,
    scale: float,
    initial_state: Tensor | None,
    query: StateQuery | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(o [B, T, H, d_v], final state [B, H, d_k, d_v], states at ``query`` [M, H, d_k, d_v] | None)``,
    as :func:`~refine_lm.ops.delta_rule.chunk_delta_rule`, from the kernels.

    q and k must already be activated and normalised (the kernels' in-kernel L2 norm is not used, so
    both backends see identical inputs); ``g`` is the log-decay (Gated DeltaNet) or None. The kernels
    read q, k, v, beta in ``dtype`` (default: bf16 on CUDA, fp32 under the interpreter, whose bf16 dots
    are wrong) and keep states and decays in fp32.
    """
    why = fla_unavailable(q, gated=g is not None)
    if why is not None:
        raise RuntimeError(f"backend 'fla': {why}")
    if interpreting():
        _prepare_interpreter()
    dtype = dtype or (torch.float32 if interpreting() else torch.bfloat16)
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    q, k, v, beta = (x.to(dtype) for x in (q, k, v, beta))
    g = None if g is None else g.float()
    state = torch.zeros(B, H, dk, dv, device=q.device) if initial_state is None else initial_state.float()
    if query is None or not query.rows.numel():
        o, final = _kernel(q, k, v, beta, g, scale, state.contiguous(), None)
        return o.float(), final.float(), None

    # every row's pieces: [0, c_1), [c_1, c_2), ..., [c_m, T) for its query lengths c strictly inside (0, T)
    wanted = [[] for _ in range(B)]
    for row, length in zip(query.rows.tolist(), query.lengths.tolist()):
        if 0 < length < T:
            wanted[row].append(length)
    bounds = [[0, *sorted(set(cuts)), T] for cuts in wanted]
    states: list[dict[int, Tensor]] = [{0: state[b]} for b in range(B)]
    outputs: list[list[Tensor]] = [[] for _ in range(B)]
    for r in range(max(len(b) for b in bounds) - 1):
        rows = [b for b in range(B) if len(bounds[b]) > r + 1]
        pieces = [(b, bounds[b][r], bounds[b][r + 1]) for b in rows]
        lengths = torch.tensor([0] + [e - s for _, s, e in pieces], device=q.device).cumsum(0)
        flat = [torch.cat([x[b, s:e] for b, s, e in pieces])[None] for x in (q, k, v, beta)]
        gates = None if g is None else torch.cat([g[b, s:e] for b, s, e in pieces])[None]
        h0 = torch.stack([states[b][s] for b, s, _ in pieces]).contiguous()
        o, final = _kernel(*flat, gates, scale, h0, lengths)
        for i, (b, _, e) in enumerate(pieces):
            outputs[b].append(o[0, int(lengths[i]) : int(lengths[i + 1])])
            states[b][e] = final[i]
    o = torch.stack([torch.cat(pieces) for pieces in outputs]).float()
    final = torch.stack([states[b][T] for b in range(B)]).float()
    at_query = torch.stack([states[b][n] for b, n in zip(query.rows.tolist(), query.lengths.tolist())]).float()
    return o, final, at_query
