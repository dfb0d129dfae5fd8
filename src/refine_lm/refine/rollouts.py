"""Rollouts and their log-probabilities, two ways (ALGORITHM.md §2.4-2.5 and §3).

``cached`` (ours): one no-grad read of each sequence gives the entropy, the final hidden states and
memory snapshots every ``snapshot_stride`` tokens; the state at each selected position is
re-derived from the nearest snapshot before it (at most ``snapshot_stride`` tokens per position,
all positions of all sequences in one batch); all ``c * n`` rollouts of all sequences are then
sampled together with the recurrent step. For the gradient, one forward over the full sequences
(NTP loss) returns differentiable states at the selected positions, and the rollout tokens are
teacher-forced from them: the policy gradient flows into how the prefix was written, and no prefix
is read twice.

``reprefill`` (the public implementation's way, kept as the test oracle and the benchmark
baseline): every rollout re-reads its prefix from scratch — to sample, to score the old policy,
and for the gradient.

Row layout everywhere: rollout ``r = (b * c + j) * n + i`` is rollout i at position j of sequence b.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..models.base import FastWeightForCausalLM
from ..ops.lm_head import token_logprobs, token_stats
from ..state import ModelState


@dataclass
class SequenceRead:
    """What one no-grad read of a batch of sequences yields."""

    hidden: Tensor  # [B, L, D] final-norm hidden states
    entropy: Tensor  # [B, L] next-token entropy (nats)
    snapshots: ModelState | None  # [B * P] memory after each of `snapshot_positions`
    snapshot_positions: Tensor | None  # [P] prefix lengths of the snapshots (0, stride, 2 stride, ...)


@dataclass
class SampledRollouts:
    tokens: Tensor  # [R, k]
    hidden: Tensor  # [R, k, D] hidden state after reading rollout token j
    logprobs: Tensor  # [R, k] log-probs of the tokens under the sampling model at temperature 1


def read_sequences(model: FastWeightForCausalLM, ids: Tensor, snapshot_stride: int = 0) -> SequenceRead:
    """Hidden states, entropies and (with a stride) memory snapshots of ``ids [B, L]``; no gradients."""
    B, L = ids.shape
    positions = None
    if snapshot_stride:
        positions = torch.arange(0, L, snapshot_stride, device=ids.device)
    with torch.no_grad():
        out = model(
            ids,
            state_positions=None if positions is None else positions.expand(B, -1),
            return_logits=False,
            return_hidden="all",
        )
        entropy = token_stats(out.last_hidden_state, model.lm_head.weight, slice_len=model.logits_slice_len).entropy
    return SequenceRead(out.last_hidden_state, entropy, out.position_states, positions)


def states_at(model: FastWeightForCausalLM, ids: Tensor, read: SequenceRead, starts: Tensor) -> ModelState:
    """The memory after ``ids[b, :starts[b, j]]`` for every (b, j): ``[B * c]`` in row-major order.

    Each is re-derived from the last snapshot at or before it, by reading at most one stride of
    tokens from that snapshot (batched over all positions).
    """
    if read.snapshots is None or read.snapshot_positions is None:
        raise ValueError("states_at() needs a SequenceRead taken with a snapshot stride")
    B, c = starts.shape
    P = len(read.snapshot_positions)
    slot = torch.searchsorted(read.snapshot_positions, starts, right=True) - 1  # last snapshot <= s
    base = read.snapshot_positions[slot]  # [B, c]
    rows = (torch.arange(B, device=ids.device)[:, None] * P + slot).reshape(-1)
    offsets = (starts - base).reshape(-1)
    width = int(offsets.max())
    if width == 0:
        return read.snapshots.index(rows)
    cols = base.reshape(-1, 1) + torch.arange(width, device=ids.device)
    cols = cols.clamp(max=ids.shape[1] - 1)  # beyond the offset the tokens do not matter
    sequence = torch.arange(B, device=ids.device).repeat_interleave(c)
    with torch.no_grad():
        out = model(
            ids[sequence[:, None], cols],
            state=read.snapshots.index(rows),
            state_positions=offsets[:, None],
            return_logits=False,
            return_hidden="none",
        )
    return out.position_states


def gather_positions(values: Tensor, positions: Tensor) -> Tensor:
    """``values [B, L, ...]`` at ``positions [B, m]`` -> ``[B, m, ...]``."""
    index = positions.reshape(*positions.shape, *([1] * (values.dim() - 2))).expand(*positions.shape, *values.shape[2:])
    return values.gather(1, index)


def targets(ids: Tensor, hidden: Tensor, starts: Tensor, rollout_len: int, n: int) -> tuple[Tensor, Tensor]:
    """The true continuations ``x[s:s+k]`` and their hidden states ``H[s:s+k]``, one row per rollout."""
    cols = starts[..., None] + torch.arange(rollout_len, device=ids.device)  # [B, c, k]
    B, c, k = cols.shape
    flat = cols.reshape(B, c * k)
    target_ids = ids.gather(1, flat).reshape(B * c, k)
    target_hidden = gather_positions(hidden, flat).reshape(B * c, k, -1)
    return target_ids.repeat_interleave(n, 0), target_hidden.repeat_interleave(n, 0)


@torch.no_grad()
def sample_rollouts(
    model: FastWeightForCausalLM,
    states: ModelState,
    last_hidden: Tensor,
    *,
    rollout_len: int,
    n: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    uniforms: Tensor | None = None,
) -> SampledRollouts:
    """n rollouts of k tokens from each state (``[M]`` states, ``last_hidden [M, D]``), all at once.

    Random numbers: ``uniforms [M * n, k]`` (rollout r's token j inverts its distribution at
    ``uniforms[r, j]``), or drawn from ``generator``."""
    out = model.generate(
        state=states.repeat_interleave(n),
        last_hidden=last_hidden.repeat_interleave(n, 0),
        max_new_tokens=rollout_len,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        return_hidden=True,
        generator=generator,
        uniforms=uniforms,
    )
    # the policy's log-probs at temperature 1, whatever the sampling temperature: from the hidden states
    before = torch.cat([last_hidden.repeat_interleave(n, 0)[:, None], out.hidden_states[:, :-1]], dim=1)
    logprobs = token_logprobs(before, model.lm_head.weight, out.tokens, slice_len=model.logits_slice_len)
    return SampledRollouts(out.tokens, out.hidden_states, logprobs)


def score_rollouts(
    model: FastWeightForCausalLM, ids: Tensor, starts: Tensor, tokens: Tensor, n: int, with_ntp: bool = True
) -> tuple[Tensor, Tensor, int]:
    """Differentiable log-probs ``[R, k]`` of rollout tokens, and the NTP loss (sum, count) of ``ids``.

    One forward over the full sequences gives the NTP loss and the states at the rollout starts;
    the rollouts are teacher-forced from those states.
    """
    B, c = starts.shape
    out = model(
        ids,
        labels=ids if with_ntp else None,
        state_positions=starts,
        return_logits=False,
        return_hidden="all",
    )
    before_first = gather_positions(out.last_hidden_state, starts - 1).reshape(B * c, -1).repeat_interleave(n, 0)
    hidden = before_first[:, None]
    if tokens.shape[1] > 1:
        forced = model(tokens[:, :-1], state=out.position_states.repeat_interleave(n), return_logits=False)
        hidden = torch.cat([hidden, forced.last_hidden_state], dim=1)
    logprobs = token_logprobs(hidden, model.lm_head.weight, tokens, slice_len=model.logits_slice_len)
    nll_sum = out.loss * out.num_tokens if with_ntp else torch.zeros((), device=ids.device)
    return logprobs, nll_sum, (out.num_tokens or 0)


# ----- the re-prefill oracle ----------------------------------------------------------------------------


def _prefix_batch(ids: Tensor, starts: Tensor, n: int, suffix: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``x[b, :s] (+ suffix[r])`` for every rollout r: ``(ids [R, W], mask [R, W], prefix lengths [R])``."""
    B, c = starts.shape
    lengths = starts.reshape(-1).repeat_interleave(n)
    sequence = torch.arange(B, device=ids.device).repeat_interleave(c * n)
    k = 0 if suffix is None else suffix.shape[1]
    width = int(lengths.max()) + k
    cols = torch.arange(width, device=ids.device)[None, :]
    batch = ids[sequence[:, None], cols.clamp(max=ids.shape[1] - 1).expand(len(lengths), -1)].clone()
    if suffix is not None:
        at = (cols - lengths[:, None]).clamp(0, k - 1)
        batch = torch.where(cols >= lengths[:, None], suffix.gather(1, at), batch)
    mask = (cols < (lengths + k)[:, None]).long()
    return batch * mask, mask, lengths


@torch.no_grad()
def sample_rollouts_reprefill(
    model: FastWeightForCausalLM,
    ids: Tensor,
    starts: Tensor,
    *,
    rollout_len: int,
    n: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
    uniforms: Tensor | None = None,
    rows_per_pass: int = 0,
) -> SampledRollouts:
    """Like :func:`sample_rollouts`, but every rollout first re-reads its prefix from scratch, and the
    old log-probs come from another full forward over prefix + rollout (as the public implementation)."""
    prompts, mask, _ = _prefix_batch(ids, starts, n)
    out = model.generate(
        prompts,
        mask,
        max_new_tokens=rollout_len,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        return_hidden=True,
        generator=generator,
        uniforms=uniforms,
    )
    logprobs, _, _ = score_rollouts_reprefill(model, ids, starts, out.tokens, n, with_ntp=False, rows_per_pass=rows_per_pass)
    return SampledRollouts(out.tokens, out.hidden_states, logprobs)


def score_rollouts_reprefill(
    model: FastWeightForCausalLM,
    ids: Tensor,
    starts: Tensor,
    tokens: Tensor,
    n: int,
    with_ntp: bool = True,
    rows_per_pass: int = 0,
) -> tuple[Tensor, Tensor, int]:
    """:func:`score_rollouts` by re-reading ``x[:s] + rollout`` from scratch for every rollout.

    ``rows_per_pass > 0`` reads that many rollouts per forward, each group trimmed to its own longest
    prefix; with gradients on, each group's activations are recomputed in the backward pass
    (activation checkpointing) instead of kept: at 16K tokens, 8 rollouts' activations at once
    exceed 24 GiB. Results and gradients are the same; the cost is one more forward per rollout.
    """
    batch, mask, lengths = _prefix_batch(ids, starts, n, suffix=tokens)
    k = tokens.shape[1]
    positions = lengths[:, None] - 1 + torch.arange(k, device=ids.device)

    def rollout_hidden(batch: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        out = model(batch, attention_mask=mask, return_logits=False, return_hidden="all")
        return gather_positions(out.last_hidden_state, positions)

    rows = rows_per_pass if 0 < rows_per_pass < len(batch) else len(batch)
    if rows == len(batch):
        hidden = rollout_hidden(batch, mask, positions)
    else:
        recompute = torch.is_grad_enabled()
        groups = []
        for i in range(0, len(batch), rows):
            width = int(lengths[i : i + rows].max()) + k  # right padding beyond it is masked anyway
            group = (batch[i : i + rows, :width], mask[i : i + rows, :width], positions[i : i + rows])
            if recompute:
                groups.append(checkpoint(rollout_hidden, *group, use_reentrant=False))
            else:
                groups.append(rollout_hidden(*group))
        hidden = torch.cat(groups)
    logprobs = token_logprobs(hidden, model.lm_head.weight, tokens, slice_len=model.logits_slice_len)
    nll_sum, count = torch.zeros((), device=ids.device), 0
    if with_ntp:
        full = model(ids, labels=ids, return_logits=False, return_hidden="none")
        nll_sum, count = full.loss * full.num_tokens, full.num_tokens
    return logprobs, nll_sum, count
