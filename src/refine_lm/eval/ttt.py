"""Test-time training (ALGORITHM.md §5): before answering a prompt, a few REFINE (+ NTP) or NTP steps on its own text.

:class:`TestTimeTrainer` is an :class:`~refine_lm.eval.runner.Evaluator` whose ``generate`` first
adapts the model to each prompt — ``steps`` optimiser updates of the REFINE objective (rollouts
from positions inside the prompt, scored against the prompt's own continuation, plus NTP) or of
NTP alone, with AdamW at a constant learning rate — and then answers it greedily.

**Episodic** (default): after every example the adapted weights *and* the optimiser state are put
back bit for bit, and each example's random draws come from a seed of (evaluation seed, prompt
tokens); an answer therefore depends on its prompt only, never on which examples came before it
or were batched with it. **Accumulating** (the paper's mode, for parity): weights and optimiser
state carry over from example to example, in evaluation order (length-sorted batches), and stay
adapted after the run.

Which parameters adapt is a list of regular expressions searched in parameter names (``all`` =
every parameter), e.g. ``attn\\.(q|k|v|b)_proj`` for the fast-weight layers' input projections
only; the others are frozen during adaptation. Each example's record gets ``ttt_seconds`` (the
adaptation's wall time) and ``ttt_peak_bytes`` (peak tensor memory allocated by the adaptation
above what was held before it: activations, gradients, optimiser state), the costs that
test-time training adds to answering. On CUDA the allocator's counters measure the memory of every
example for free; on CPU the tensor tracker (``memory.py``) slows the adaptation of a small model
several-fold, so it runs on every ``memory_every``-th example only, and those examples' seconds
(``ttt_tracked``) are left out of the mean time. Prompts are adapted to and answered one at a time.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import zlib
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..config import ConfigError
from ..memory import peak_memory_bytes
from ..optim import OptimConfig, build_optimizer
from ..refine.ntp import NextTokenObjective
from ..refine.objective import RefineConfig, RefineObjective
from ..step_random import StepRandom
from .runner import Evaluator

TTTMethod = Literal["refine", "ntp"]
TTTMode = Literal["episodic", "accumulating"]


def select_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the parameters matching any of ``patterns`` (regexes searched in the name; ``all``: every one)."""
    names = [name for name, _ in model.named_parameters()]
    if not patterns:
        raise ConfigError("ttt_params: give at least one pattern (or all)")
    if "all" in patterns:
        return names
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as e:
        raise ConfigError(f"ttt_params: invalid regular expression {e.pattern!r}: {e}") from None
    chosen = [n for n in names if any(c.search(n) for c in compiled)]
    if not chosen:
        raise ConfigError(f"ttt_params {list(patterns)} match no parameter; names look like: {', '.join(names[:6])}, ...")
    return chosen


class TestTimeTrainer(Evaluator):
    """An evaluator that adapts the model to each prompt before answering it (see the module docstring).

    method: ``refine`` (the REFINE objective at the test-time defaults, ALGORITHM.md §2.8) or ``ntp``.
    steps: adaptation steps per prompt (each one optimiser update for NTP, ppo_epochs * mini_batches for REFINE).
    lr: AdamW learning rate (constant); betas, weight decay and gradient clipping are ``optim``'s.
    mode: ``episodic`` or ``accumulating``.
    params: regexes of the parameters to adapt, or ``["all"]``.
    refine: REFINE's settings (unset ``reward`` / ``lambda_rl`` take the test-time defaults).
    optim: AdamW settings other than the learning rate.
    memory_every: on CPU, measure the peak memory of every n-th adapted example (0: never); on CUDA, of all.
    Other keyword arguments are :class:`Evaluator`'s.
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(
        self,
        model,
        tokenizer,
        *,
        method: TTTMethod = "refine",
        steps: int = 1,
        lr: float = 1e-5,
        mode: TTTMode = "episodic",
        params: Sequence[str] = ("all",),
        refine: RefineConfig | None = None,
        optim: OptimConfig | None = None,
        memory_every: int = 1,
        **evaluator_kwargs: Any,
    ):
        super().__init__(model, tokenizer, **evaluator_kwargs)
        if method not in ("refine", "ntp"):
            raise ConfigError(f"ttt must be refine or ntp, got {method!r}")
        if mode not in ("episodic", "accumulating"):
            raise ConfigError(f"ttt_mode must be episodic or accumulating, got {mode!r}")
        if steps < 1:
            raise ConfigError(f"ttt_steps must be >= 1, got {steps}")
        self.method, self.steps, self.mode = method, steps, mode
        refine_objective = RefineObjective(refine or RefineConfig(), 1, phase="test")
        self.refine_cfg = refine_objective.cfg
        self.objective = refine_objective if method == "refine" else NextTokenObjective(1)
        self.optim_cfg = dataclasses.replace(optim or OptimConfig(), lr=lr)
        self.adapted = select_parameters(model, params)
        parameters = dict(model.named_parameters())
        self.params = [parameters[n] for n in self.adapted]
        with _trainable(model, self.adapted):
            self.optimizer = build_optimizer(model, self.optim_cfg, names=set(self.adapted))
        self.original = {n: p.detach().clone() for n, p in zip(self.adapted, self.params)}
        self.initial_optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        self.skipped_updates = 0
        self.memory_every = memory_every
        self.examples_adapted = 0

    # ----- adapting and restoring -------------------------------------------------------------
    def restore(self) -> None:
        """Put back the original weights of the adapted parameters and the optimiser's initial state, bit for bit."""
        with torch.no_grad():
            for name, param in zip(self.adapted, self.params):
                param.copy_(self.original[name])
        self.optimizer.load_state_dict(copy.deepcopy(self.initial_optimizer_state))

    def example_random(self, prompt: Sequence[int]) -> StepRandom:
        """The random draws of one example: a function of the evaluation seed and the prompt's tokens only."""
        return StepRandom(self.seed, zlib.crc32(np.asarray(prompt, dtype=np.int64).tobytes()))

    def adapt(self, ids: torch.Tensor, rng: StepRandom) -> int:
        """``steps`` updates on ``ids [1, L]``; returns how many were skipped as non-finite."""
        if self.method == "refine":
            cfg, L = self.refine_cfg, ids.shape[1]
            shortest = max(2 * cfg.margin, cfg.margin + cfg.rollout_len, cfg.num_chunks)
            if shortest > L:
                raise ConfigError(
                    f"test-time REFINE needs prompts of at least {shortest} tokens (margin {cfg.margin}, rollout_len "
                    f"{cfg.rollout_len}, num_chunks {cfg.num_chunks}); got one of {L}: lower ttt_refine.margin"
                )
        skipped = 0
        was_training = self.model.training
        self.model.train()
        with _trainable(self.model, self.adapted), torch.enable_grad(), self._autocast():
            for _ in range(self.steps):
                for micro_batches in self.objective.updates(self.model, ids, rng):
                    self.optimizer.zero_grad(set_to_none=True)
                    loss_sum = 0.0
                    for micro in micro_batches:
                        loss, _ = self.objective.loss(self.model, micro)
                        loss.backward()
                        loss_sum += float(loss.detach())
                    clip = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else math.inf
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
                    if math.isfinite(loss_sum) and math.isfinite(grad_norm):
                        self.optimizer.step()
                    else:  # a non-finite update is dropped, as in training
                        skipped += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train(was_training)
        return skipped

    # ----- the generation seam ----------------------------------------------------------------
    def generate(self, prompts: list[list[int]], max_new_tokens: int, stop_at_newline: bool) -> list[list[int]]:
        answers, info = [], []
        for prompt in prompts:
            ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
            rng = self.example_random(prompt)
            free = self.device.type == "cuda"  # the allocator's counters cost nothing
            measure = self.memory_every > 0 and (free or self.examples_adapted % self.memory_every == 0)
            self.examples_adapted += 1
            start = self._clock()
            if measure:
                peak, skipped = peak_memory_bytes(lambda ids=ids, rng=rng: self.adapt(ids, rng), self.device)
            else:
                peak, skipped = None, self.adapt(ids, rng)
            seconds = self._clock() - start
            answers += super().generate([prompt], max_new_tokens, stop_at_newline)
            if self.mode == "episodic":
                self.restore()
            self.skipped_updates += skipped
            tracked = measure and not free
            info.append({"ttt_seconds": seconds, "ttt_peak_bytes": peak, "ttt_tracked": tracked, "ttt_skipped_updates": skipped})
        self.last_generation_info = info
        return answers

    def describe(self) -> dict[str, Any]:
        """The settings, for results.json."""
        total = sum(p.numel() for p in self.model.parameters())
        return {
            "method": self.method,
            "steps": self.steps,
            "lr": self.optim_cfg.lr,
            "mode": self.mode,
            "adapted_parameters": sum(p.numel() for p in self.params),
            "total_parameters": total,
            "adapted_tensors": len(self.adapted),
            "refine": dataclasses.asdict(self.refine_cfg) if self.method == "refine" else None,
            "skipped_updates": self.skipped_updates,
            "applies_to": "generation tasks (NIAH, QA, LongBench); perplexity is measured without adaptation",
        }


class _trainable:
    """Within the block only the named parameters require gradients (the flags are put back after)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        self.model, self.names = model, set(names)

    def __enter__(self) -> None:
        self.flags = {n: p.requires_grad for n, p in self.model.named_parameters()}
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in self.names)

    def __exit__(self, *exc) -> None:
        for name, param in self.model.named_parameters():
            param.requires_grad_(self.flags[name])
