"""The REFINE objective: ``lambda_ntp * NTP + lambda_rl * (clipped PG [+ beta * KL])`` (ALGORITHM.md §2).

Per training batch of B sequences (L tokens each):

1. rollout phase, no gradients — read the sequences (entropy, hidden states, memory snapshots),
   select c positions per sequence, sample n rollouts of k tokens from the state at each, score
   them against the true continuation (reward), and standardise rewards in groups (advantages);
2. update phase — for each PPO epoch and mini-batch (whole sequences, so groups are never split):
   one forward over the sequences gives the NTP loss and differentiable states at the rollout
   starts; the rollouts are teacher-forced from them for the new log-probs; the clipped surrogate
   is averaged over rollout tokens.

Every random draw belongs to one sequence (``StepRandom``: its positions, then its rollouts' tokens,
then its mini-batch placement per epoch), so under data parallelism each rank rolls out and scores
its own sequences exactly as one process would.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..ranks import mean_over_ranks
from ..step_random import StepRandom, mini_batch_rows
from .grpo import GroupBy, clipped_policy_loss, grpo_advantages, k3_kl
from .rewards import RewardInputs, resolve_reward, reward_report
from .rollouts import (
    gather_positions,
    read_sequences,
    sample_rollouts,
    sample_rollouts_reprefill,
    score_rollouts,
    score_rollouts_reprefill,
    states_at,
    targets,
)
from .selection import SelectionMode, select_positions, smooth_entropy

Phase = Literal["mid", "post", "test"]
# (reward, lambda_rl) of each phase when the config leaves them unset (ALGORITHM.md §2.6 / 2.8)
PHASE_DEFAULTS: dict[str, tuple[str, float]] = {"mid": ("cosine", 0.2), "post": ("hybrid", 0.2), "test": ("exact", 0.4)}


@dataclass
class RefineConfig:
    """REFINE's hyper-parameters; defaults are the public implementation's (ALGORITHM.md §2).

    num_chunks: c, rollout positions per sequence (one per chunk of L // c tokens).
    rollout_len: k, tokens per rollout.
    rollouts_per_position: n.
    selection: how a position is picked in its chunk: ``entropy`` (softmax of smoothed entropy / tau),
        ``uniform``, ``argmax``, ``argmin``.
    tau: temperature of the entropy softmax.
    margin: rollout starts are clamped to [margin, L - margin].
    temperature / top_p / top_k: rollout sampling (log-probs are always the policy's, at temperature 1).
    reward: ``cosine``, ``exact``, ``hybrid``, or ``"module:callable"`` for your own; ``null`` (default): the
        phase's (ALGORITHM.md §2.8): cosine at mid-training (and for the objective used on its own), hybrid at
        post-training, exact at test time.
    reward_kwargs: arguments to build a custom reward (a class or factory) once.
    group_by: GRPO groups: ``sequence`` (all c*n rollouts of a sequence), ``position`` (the n rollouts
        of one position), ``auto`` (sequence when n = 1, else position).
    scale_std: divide by the group std (False: Dr. GRPO).
    clip_eps: PPO clip range.
    dual_clip: bound on the loss of negative-advantage tokens (``null`` = off).
    kl_beta: weight of a k3 KL penalty to a frozen copy of the starting model (0 = none, no copy kept).
    lambda_ntp / lambda_rl: weights of the NTP loss on the full sequences and of the RL loss; ``lambda_rl``
        ``null`` (default): the phase's (0.2 at mid- and post-training, 0.4 at test time).
    ppo_epochs / mini_batches: passes over the batch's rollouts and updates per pass
        (optimiser steps per batch = ppo_epochs * mini_batches).
    rollout_mode: ``cached`` (states re-used) or ``reprefill`` (every rollout re-reads its prefix).
    reprefill_rows_per_pass: rollouts per forward in ``reprefill`` mode (0 = all at once); fewer saves
        memory by recomputing activations in the backward pass (same gradients, one more forward).
    snapshot_stride: tokens between memory snapshots in the no-grad read (0: L // (4 c)); a selected
        state is re-derived from the snapshot before it. Smaller = less re-reading, more memory.
    """

    num_chunks: int = 8
    rollout_len: int = 5
    rollouts_per_position: int = 1
    selection: SelectionMode = "entropy"
    tau: float = 1.0
    margin: int = 20
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    reward: str | None = None
    reward_kwargs: dict[str, Any] = field(default_factory=dict)
    group_by: GroupBy = "auto"
    scale_std: bool = True
    clip_eps: float = 0.2
    dual_clip: float | None = 3.0
    kl_beta: float = 0.0
    lambda_ntp: float = 1.0
    lambda_rl: float | None = None
    ppo_epochs: int = 1
    mini_batches: int = 1
    rollout_mode: Literal["cached", "reprefill"] = "cached"
    reprefill_rows_per_pass: int = 0
    snapshot_stride: int = 0

    def __post_init__(self) -> None:
        for name in ("num_chunks", "rollout_len", "rollouts_per_position", "ppo_epochs", "mini_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reprefill_rows_per_pass < 0:
            raise ValueError(f"reprefill_rows_per_pass must be >= 0, got {self.reprefill_rows_per_pass}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    def check_fits(self, length: int) -> None:
        """Refuse sequences of ``length`` tokens too short for distinct rollouts: each of the c chunks needs room
        for a k-token rollout, and the margins at both ends are never sampled (else starts collapse onto them)."""
        needed = self.num_chunks * self.rollout_len + 2 * self.margin
        if length < needed:
            raise ValueError(
                f"sequences of {length} tokens are too short for REFINE's rollouts: num_chunks {self.num_chunks} x "
                f"rollout_len {self.rollout_len} + 2 x margin {self.margin} = {needed} tokens"
            )

    def for_phase(self, phase: Phase) -> RefineConfig:
        """A copy with the phase's defaults for the settings left unset (reward, lambda_rl)."""
        reward, lambda_rl = PHASE_DEFAULTS[phase]
        return dataclasses.replace(
            self, reward=self.reward or reward, lambda_rl=lambda_rl if self.lambda_rl is None else self.lambda_rl
        )


@dataclass
class RolloutBatch:
    """The rollout phase's result for B sequences (rows of per-rollout tensors: see rollouts.py)."""

    ids: Tensor  # [B, L]
    starts: Tensor  # [B, c]
    tokens: Tensor  # [R, k]
    old_logprobs: Tensor  # [R, k]
    advantages: Tensor  # [R]
    ref_logprobs: Tensor | None  # [R, k]

    def select(self, sequences: Tensor, n: int) -> RolloutBatch:
        c = self.starts.shape[1]
        rows = (sequences[:, None] * (c * n) + torch.arange(c * n, device=sequences.device)).reshape(-1)
        return RolloutBatch(
            self.ids[sequences],
            self.starts[sequences],
            self.tokens[rows],
            self.old_logprobs[rows],
            self.advantages[rows],
            None if self.ref_logprobs is None else self.ref_logprobs[rows],
        )


@dataclass
class RefineMicroBatch:
    """Sequences of one micro-batch with their rollouts, and the token counts its loss shares are taken over."""

    rollouts: RolloutBatch
    ntp_tokens: float  # predicted tokens in the whole mini-batch, mean over ranks (NTP is a mean over them)
    rollout_tokens: float  # rollout tokens in the whole mini-batch, mean over ranks (PG is a token-mean over them)


class RefineObjective:
    """The :class:`~refine_lm.train.loop.Objective` of REFINE."""

    def __init__(self, cfg: RefineConfig, micro_batch_size: int, reference: nn.Module | None = None, phase: Phase = "mid"):
        self.cfg = cfg.for_phase(phase)  # settings left unset take the phase's defaults
        self.micro_batch_size = micro_batch_size
        self.updates_per_step = cfg.ppo_epochs * cfg.mini_batches
        self.reward_fn = resolve_reward(self.cfg.reward, self.cfg.reward_kwargs or None)
        self.reference = reference
        self._step_metrics: dict[str, float] = {}

    def attach_reference(self, model: nn.Module) -> None:
        """Keep a frozen copy of the starting model for the KL penalty (only when kl_beta > 0)."""
        if self.cfg.kl_beta > 0 and self.reference is None:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)

    # ----- rollout phase ----------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, model, ids: Tensor, rng: StepRandom) -> RolloutBatch:
        """Positions, rollouts, rewards and advantages of the sequences ``ids [B, L]`` (row b draws from
        ``rng``'s stream b)."""
        cfg, n, k = self.cfg, self.cfg.rollouts_per_position, self.cfg.rollout_len
        B, L = ids.shape
        stride = cfg.snapshot_stride or max(1, L // (4 * cfg.num_chunks))
        cached = cfg.rollout_mode == "cached"
        read = read_sequences(model, ids, snapshot_stride=stride if cached else 0)
        starts = select_positions(
            read.entropy,
            num_chunks=cfg.num_chunks,
            rollout_len=k,
            mode=cfg.selection,
            tau=cfg.tau,
            margin=cfg.margin,
            uniforms=rng.uniform(B, cfg.num_chunks, device=ids.device),
        )
        uniforms = rng.uniform(B, cfg.num_chunks * n, k, device=ids.device).reshape(-1, k)  # rows in rollout order
        sampling = dict(rollout_len=k, n=n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, uniforms=uniforms)
        if cached:
            last_hidden = gather_positions(read.hidden, starts - 1).reshape(B * cfg.num_chunks, -1)
            sampled = sample_rollouts(model, states_at(model, ids, read, starts), last_hidden, **sampling)
        else:
            sampled = sample_rollouts_reprefill(model, ids, starts, **sampling, rows_per_pass=cfg.reprefill_rows_per_pass)
        target_ids, target_hidden = targets(ids, read.hidden, starts, k, n)
        inputs = RewardInputs(sampled.tokens, target_ids, sampled.hidden, target_hidden, sampled.logprobs, model.lm_head.weight)
        rewards = self.reward_fn(inputs).reshape(B, cfg.num_chunks, n)
        advantages = grpo_advantages(rewards, cfg.group_by, cfg.scale_std).reshape(-1)

        ref_logprobs = None
        if self.reference is not None and cfg.kl_beta > 0:
            self.reference.to(ids.device)
            score = self._score_fn()
            ref_logprobs, _, _ = score(self.reference, ids, starts, sampled.tokens, n, with_ntp=False)

        selected_entropy = smooth_entropy(read.entropy, k).gather(1, starts - 1)
        self._step_metrics = {
            **reward_report(inputs),
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "entropy_all": float(read.entropy.mean()),
            "entropy_selected": float(selected_entropy.mean()),
            "rollout_logprob": float(sampled.logprobs.mean()),
        }
        return RolloutBatch(ids, starts, sampled.tokens, sampled.logprobs, advantages, ref_logprobs)

    def _score_fn(self):
        if self.cfg.rollout_mode == "cached":
            return score_rollouts
        return functools.partial(score_rollouts_reprefill, rows_per_pass=self.cfg.reprefill_rows_per_pass)

    def step_metrics(self) -> dict[str, float]:
        return self._step_metrics

    # ----- update phase -----------------------------------------------------------------------
    def updates(self, model, batch: Tensor, rng: StepRandom) -> Iterator[list[RefineMicroBatch]]:
        rollouts = self.rollout(model, batch, rng)
        cfg, n, k = self.cfg, self.cfg.rollouts_per_position, self.cfg.rollout_len
        B, L = batch.shape
        per_mini = B // cfg.mini_batches
        micro = min(self.micro_batch_size, max(per_mini, 1))
        # each epoch places every sequence in a mini-batch by a draw of its own (mini_batch_rows)
        keys = rng.uniform(B, cfg.ppo_epochs) if cfg.mini_batches > 1 else None
        for epoch in range(cfg.ppo_epochs):
            for mini in mini_batch_rows(B, cfg.mini_batches, None if keys is None else keys[:, epoch]):
                mini = mini.to(batch.device)
                ntp_tokens = mean_over_ranks(len(mini) * (L - 1))
                rollout_tokens = mean_over_ranks(len(mini) * cfg.num_chunks * n * k)
                yield [
                    RefineMicroBatch(rollouts.select(mini[i : i + micro], n), ntp_tokens, rollout_tokens)
                    for i in range(0, len(mini), micro)
                ]

    def loss(self, model, micro: RefineMicroBatch) -> tuple[Tensor, dict[str, Any]]:
        cfg, n = self.cfg, self.cfg.rollouts_per_position
        r = micro.rollouts
        score = self._score_fn()
        logprobs, nll_sum, ntp_count = score(model, r.ids, r.starts, r.tokens, n, with_ntp=True)
        per_token, flags = clipped_policy_loss(
            logprobs, r.old_logprobs, r.advantages, clip_eps=cfg.clip_eps, dual_clip=cfg.dual_clip
        )
        tokens = per_token.numel()
        pg = per_token.sum() / micro.rollout_tokens
        rl = pg
        metrics: dict[str, Any] = {}
        if r.ref_logprobs is not None:
            kl = k3_kl(logprobs, r.ref_logprobs)
            rl = rl + cfg.kl_beta * kl.sum() / micro.rollout_tokens
            metrics["kl_ref"] = (float(kl.mean()), tokens)
        ntp = nll_sum / micro.ntp_tokens
        loss = cfg.lambda_ntp * ntp + cfg.lambda_rl * rl
        metrics.update(
            {
                "ntp_loss": (float(nll_sum.detach()) / max(ntp_count, 1), ntp_count),
                "pg_loss": (float(per_token.detach().mean()), tokens),
                "clip_frac": (float(flags["clip"].mean()), tokens),
                "dual_clip_frac": (float(flags["dual_clip"].mean()), tokens),
                "approx_kl": (float(flags["approx_kl"].mean()), tokens),
                "ratio_max": (float((logprobs.detach() - r.old_logprobs).exp().max()), 1),
            }
        )
        return loss, metrics
