"""The CPU tensor-memory tracker used by the benchmarks."""

from __future__ import annotations

import torch

from refine_lm.memory import TensorMemoryTracker, peak_memory_bytes

MB = 4 * 1000 * 1000  # bytes of a 1000 x 1000 fp32 tensor


def test_counts_allocations_not_views_and_releases_freed_storage():
    def work():
        a = torch.ones(1000, 1000)
        b = a * 2  # peak: a and b
        del a
        c = b.view(-1)  # a view: no new memory
        c.add_(1)  # in place: no new memory
        return c.sum()

    peak, result = peak_memory_bytes(work)
    assert peak == 2 * MB
    assert float(result) == 3 * 1000 * 1000


def test_tensors_kept_by_autograd_stay_counted():
    x = torch.randn(1000, 1000, requires_grad=True)
    with TensorMemoryTracker() as tracker:
        y = x.exp()  # saved for backward
        z = y.sum()
        del y  # the graph still holds it
        assert tracker.current >= MB
        z.backward()
        del z
    assert tracker.peak >= MB
