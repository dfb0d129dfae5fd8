"""Evaluation: NIAH (RULER-style), RULER QA, LongBench v1, perplexity by position.

``metrics`` (scores), ``niah`` / ``qa`` / ``longbench`` (examples of each task), ``perplexity``,
``runner`` (batched generation through the recurrent decoder, per-example cache), ``suite``
(settings, the run, results files), ``plots``, ``records`` (reading data files), ``synthetic``
(made-up text and a throwaway tokenizer). ``refine-lm eval`` is the command.
"""

from .runner import Evaluator, Example, ExampleCache
from .suite import EvalConfig, run_suite

__all__ = ["EvalConfig", "Evaluator", "Example", "ExampleCache", "run_suite"]
