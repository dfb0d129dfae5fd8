"""Peak memory of a piece of work, measured the same way on CPU and GPU.

On CUDA this is ``torch.cuda.max_memory_allocated``. On CPU there is no allocator counter, and a
process's resident size mostly reflects ``malloc``'s caching, so :class:`TensorMemoryTracker`
counts tensor storage directly: every storage created inside the context is added when it appears
and removed when it is freed (storages, unlike tensors, tell Python exactly when they die, also
when autograd is what kept them alive). The peak is what a GPU allocator would have had to hold.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorMemoryTracker(TorchDispatchMode):
    """Counts bytes of tensor storage allocated inside the ``with`` block: ``current`` and ``peak``."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._live: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t.untyped_storage(), inputs)
        return out

    def _track(self, storage: torch.UntypedStorage, inputs: set[int]) -> None:
        key = storage._cdata
        # views and in-place results share an input's storage: not a new allocation
        if key in self._live or key in inputs or storage.nbytes() == 0:
            return
        nbytes = storage.nbytes()
        self._live.add(key)
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key, nbytes)

    def _release(self, key: int, nbytes: int) -> None:
        if key in self._live:
            self._live.discard(key)
            self.current -= nbytes


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[int, Any]:
    """``(peak bytes allocated while fn runs, above what was allocated before; fn's result)``."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, result
    with TensorMemoryTracker() as tracker:
        result = fn()
    return tracker.peak, result
