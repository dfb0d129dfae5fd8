"""Statistics over seeds: mean, standard deviation, a percentile bootstrap interval, paired differences.

Every run of a study is one seed of one arm; a seed fixes initialisation-independent randomness
(data order, rollout draws, evaluation prompts), so two arms with the same seed saw the same batches
and the same test prompts. The paired difference ``arm - reference`` per seed removes that shared
variation, which is why it is reported beside the per-arm intervals: it is the number that says
whether one method beats another beyond seed noise (its interval excludes 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 10_000


@dataclass
class Summary:
    """Mean, sample standard deviation (ddof 1; 0 for one value), 95% bootstrap interval of the mean, count."""

    mean: float
    std: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        # a bound that is zero but for the rounding of a resampled mean (2.8e-15 from paired differences
        # of 0 and +-x) touches zero: it must not count as beyond seed noise
        tolerance = 1e-9 * max(abs(self.low), abs(self.high))
        return self.n > 1 and (self.low > tolerance or self.high < -tolerance)


def bootstrap_interval(
    values: Sequence[float], level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample the values with replacement ``samples`` times."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("bootstrap_interval() needs at least one value")
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(len(x), size=(samples, len(x)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))


def summarize(values: Sequence[float], level: float = 0.95, seed: int = 0) -> Summary:
    x = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not x:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0)
    low, high = bootstrap_interval(x, level, seed=seed)
    std = float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
    return Summary(float(np.mean(x)), std, low, high, len(x))


def paired_difference(arm: dict[int, float], reference: dict[int, float], level: float = 0.95, seed: int = 0) -> Summary:
    """``arm - reference`` over the seeds both have (by seed), summarised."""
    common = sorted(set(arm) & set(reference))
    return summarize([arm[s] - reference[s] for s in common], level, seed)
