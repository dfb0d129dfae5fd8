"""The random draws of a training step, one stream per sequence, and the placement of sequences in mini-batches.

Both make a step's randomness a function of (seed, step, sequence) alone, so a resumed run and N
data-parallel ranks draw exactly what one uninterrupted process draws.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class StepRandom:
    """The random draws of one training step: one stream per sequence of the step's global batch.

    The stream of sequence ``i`` is seeded with ``(seed, step, i)`` and draws on the CPU: a sequence's
    draws (rollout positions, sampled tokens, mini-batch placement) are the same whichever data-parallel
    rank holds it, however its rank splits the batch, on any device, and after a resume. ``offset`` is the
    global index of this rank's first sequence.
    """

    def __init__(self, seed: int, step: int, offset: int = 0):
        self.seed, self.step, self.offset = seed, step, offset
        self._streams: list[torch.Generator] = []

    def _stream(self, row: int) -> torch.Generator:
        while len(self._streams) <= row:
            index = self.offset + len(self._streams)
            seed = np.random.SeedSequence([self.seed % 2**64, self.step, index]).generate_state(1, np.uint64)[0]
            self._streams.append(torch.Generator().manual_seed(int(seed)))
        return self._streams[row]

    def view(self, start: int, count: int) -> StepRandom:
        """The streams of rows ``start .. start + count - 1`` as rows ``0 .. count - 1`` (the same streams:
        draws from the view advance them), e.g. to work on one sequence at a time."""
        view = StepRandom(self.seed, self.step, self.offset + start)
        view._streams = [self._stream(start + j) for j in range(count)]
        return view

    def uniform(self, rows: int, *shape: int, device: str | torch.device | None = None) -> Tensor:
        """float64 ``[rows, *shape]`` uniform in [0, 1); row i is the next draws of stream ``offset + i``."""
        draws = [torch.rand(shape, generator=self._stream(i), dtype=torch.float64) for i in range(rows)]
        return torch.stack(draws).to(device) if draws else torch.empty(0, *shape, dtype=torch.float64, device=device)


def mini_batch_rows(num_rows: int, mini_batches: int, keys: Tensor | None = None) -> list[Tensor]:
    """Split ``num_rows`` rows into ``mini_batches`` equal mini-batches of row indices.

    Each run of ``mini_batches`` consecutive rows gives one row to every mini-batch: without ``keys`` row i
    goes to mini-batch ``i % mini_batches``; with ``keys [num_rows]`` (e.g. uniform draws) the row with the
    j-th smallest key of its run goes to mini-batch j. A rank's rows are a whole number of runs (its share
    of the batch is a multiple of ``mini_batches``), so the global mini-batches are the same for any number
    of ranks.
    """
    if num_rows % mini_batches:
        raise ValueError(f"batch of {num_rows} sequences (per rank) does not split into {mini_batches} mini-batches")
    slot = torch.arange(num_rows) % mini_batches
    if keys is not None:
        slot = keys.reshape(-1, mini_batches).argsort(-1).argsort(-1).reshape(-1).cpu()
    return [torch.nonzero(slot == m)[:, 0] for m in range(mini_batches)]
