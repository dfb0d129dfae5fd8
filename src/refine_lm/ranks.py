"""Where this process stands among data-parallel ranks, and the collectives objectives and the loop need.

Everything here is a no-op (or the trivial answer) in a single process, so library code below the
trainers can call it without knowing whether torchrun started it; ``train/distributed.py`` sets the
process group up and wraps models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: from the process group, else from torchrun's environment, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs and writes files."""
    return world()[0] == 0


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_over_ranks(value: float) -> float:
    """The mean of ``value`` over all ranks (``value`` itself in a single process).

    Dividing a rank's loss sum by ``mean_over_ranks(its token count)`` makes the ranks' average gradient the
    gradient of the token-mean over the global batch. Every rank must call it at the same point.
    """
    if not _active():
        return float(value)
    total = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def reduce_metrics(values: dict[str, float], sums: Sequence[str] = (), maxima: Sequence[str] = ()) -> dict[str, float]:
    """Metrics of all ranks: the mean of each value, the sum of those in ``sums``, the maximum of those in
    ``maxima``. Every rank must pass the same keys."""
    if not _active():
        return dict(values)
    keys = list(values)
    added = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    largest = added.clone()
    dist.all_reduce(added)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    size = dist.get_world_size()
    return {
        k: float(largest[i]) if k in maxima else float(added[i]) if k in sums else float(added[i]) / size
        for i, k in enumerate(keys)
    }


def barrier() -> None:
    if _active():
        dist.barrier()
