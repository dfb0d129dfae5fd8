"""Seeded studies: a grid of (arm x seed) runs from one base, stored cell by cell, reported with intervals."""

from .runner import ArmConfig, StudyConfig, StudyEvalConfig, expand_grid, run_study
from .stats import Summary, bootstrap_interval, paired_difference, summarize

__all__ = [
    "ArmConfig",
    "StudyConfig",
    "StudyEvalConfig",
    "Summary",
    "bootstrap_interval",
    "expand_grid",
    "paired_difference",
    "run_study",
    "summarize",
]
