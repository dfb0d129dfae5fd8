"""The post-training objective (ALGORITHM.md §5, "nested"): an inner step on each example's prompt, then answer-SFT.

A post-training example is a prompt (long context + question) and its answer. One training step
on a batch of examples makes, as successive optimiser updates:

1. the **inner** update(s), on the prompts only — never the answers:
   ``refine``: REFINE (``lambda_ntp * NTP + lambda_rl * clipped PG`` on rollouts from positions
   inside each prompt; ``ppo_epochs * mini_batches`` updates); ``nested-sft``: NTP on the prompts
   (one update); ``answer-sft``: none;
2. the **answer-SFT** update: cross-entropy on the answer tokens only, given the prompt, read by
   the model as it is after the inner update(s).

Prompts have different lengths. The answer-SFT and NTP updates read right-padded batches (padding
never enters the memory, and its labels are -100); REFINE reads each prompt on its own (a
micro-batch per example, losses taken over the whole batch's tokens), so that rollout positions
are drawn from every prompt's real tokens. All randomness comes from the step's per-example random
streams (:class:`~refine_lm.step_random.StepRandom`): a resumed run repeats the same updates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..ops.lm_head import IGNORE_INDEX
from ..ranks import mean_over_ranks
from ..refine.objective import RefineConfig, RefineMicroBatch, RefineObjective
from ..step_random import StepRandom, mini_batch_rows

PostMethod = Literal["refine", "nested-sft", "answer-sft"]


@dataclass
class QABatch:
    """A batch of tokenised examples: prompt ids and answer ids per example (1-D tensors, any lengths)."""

    prompts: list[Tensor]
    answers: list[Tensor]

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.answers) or not self.prompts:
            raise ValueError(f"a QA batch needs one answer per prompt (>= 1), got {len(self.prompts)} and {len(self.answers)}")
        for i, (p, a) in enumerate(zip(self.prompts, self.answers)):
            if p.dim() != 1 or a.dim() != 1 or len(p) < 1 or len(a) < 1:
                raise ValueError(f"example {i}: prompt and answer must be non-empty 1-D id tensors")

    def __len__(self) -> int:
        return len(self.prompts)

    def to(self, device: torch.device | str) -> QABatch:
        return QABatch([p.to(device) for p in self.prompts], [a.to(device) for a in self.answers])

    def numel(self) -> int:
        """Real tokens (prompts and answers), for the loop's tokens/s."""
        return sum(len(p) + len(a) for p, a in zip(self.prompts, self.answers))

    def select(self, rows: list[int]) -> QABatch:
        return QABatch([self.prompts[i] for i in rows], [self.answers[i] for i in rows])


def pad_right(rows: list[Tensor], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """``(ids [B, W], attention_mask [B, W])`` with each row's tokens first, then padding."""
    width = max(len(r) for r in rows)
    ids = rows[0].new_full((len(rows), width), pad_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def answer_sft_inputs(batch: QABatch, pad_id: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``(ids, attention_mask, labels)`` of prompt + answer rows, right-padded; labels are the answer
    tokens and -100 everywhere else (prompt and padding), so the loss counts answer tokens only."""
    ids, mask = pad_right([torch.cat([p, a]) for p, a in zip(batch.prompts, batch.answers)], pad_id)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (p, a) in enumerate(zip(batch.prompts, batch.answers)):
        labels[i, len(p) : len(p) + len(a)] = a
    return ids, mask, labels


@dataclass
class _PromptNTP:
    ids: Tensor
    mask: Tensor
    predicted: float  # predicted prompt tokens in the whole update, mean over ranks (the loss is their mean)


@dataclass
class _AnswerSFT:
    ids: Tensor
    mask: Tensor
    labels: Tensor
    answer_tokens: int  # answer tokens in the whole update (the loss is their mean)


class NestedObjective:
    """The :class:`~refine_lm.train.loop.Objective` of post-training (see the module docstring).

    method: ``refine`` (inner REFINE), ``nested-sft`` (inner NTP), ``answer-sft`` (no inner step).
    refine: REFINE's settings for the inner step (unset reward / lambda_rl: the post-training defaults, ALGORITHM.md §2.8).
    micro_batch_size: examples per forward/backward of the NTP and answer-SFT updates.
    """

    def __init__(self, method: PostMethod, refine: RefineConfig, micro_batch_size: int, pad_id: int = 0):
        if method not in ("refine", "nested-sft", "answer-sft"):
            raise ValueError(f"unknown post-training method {method!r} (refine, nested-sft, answer-sft)")
        self.method = method
        self.micro_batch_size = micro_batch_size
        self.pad_id = pad_id
        self.refine = RefineObjective(refine, 1, phase="post") if method == "refine" else None
        inner = {"refine": refine.ppo_epochs * refine.mini_batches, "nested-sft": 1, "answer-sft": 0}[method]
        self.updates_per_step = inner + 1
        self._step_metrics: dict[str, float] = {}

    # ----- the inner step: prompts only -------------------------------------------------------
    def inner_updates(self, model: nn.Module, batch: QABatch, rng: StepRandom) -> Iterator[list[Any]]:
        """The optimiser updates of the inner step; they see ``batch.prompts`` and nothing else."""
        if self.method == "nested-sft":
            predicted = mean_over_ranks(sum(len(p) - 1 for p in batch.prompts))
            chunks = [batch.prompts[i : i + self.micro_batch_size] for i in range(0, len(batch), self.micro_batch_size)]
            yield [_PromptNTP(*pad_right(rows, self.pad_id), predicted) for rows in chunks]
        elif self.method == "refine":
            yield from self._refine_updates(model, batch.prompts, rng)

    def _refine_updates(self, model: nn.Module, prompts: list[Tensor], rng: StepRandom) -> Iterator[list[Any]]:
        refine = self.refine
        cfg = refine.cfg
        rollouts, reports = [], []
        for i, prompt in enumerate(prompts):  # each prompt alone: its rollout positions lie inside its own tokens
            rollouts.append(refine.rollout(model, prompt[None], rng.view(i, 1)))
            reports.append(refine.step_metrics())
        weights = [len(p) for p in prompts]
        self._step_metrics = {
            key: sum(w * r[key] for w, r in zip(weights, reports)) / sum(weights) for key in reports[0]
        }  # token-weighted means over the batch's prompts
        B = len(prompts)
        if B % cfg.mini_batches:
            raise ValueError(f"batch of {B} examples does not split into {cfg.mini_batches} mini-batches")
        rollout_tokens_each = cfg.num_chunks * cfg.rollouts_per_position * cfg.rollout_len
        # each epoch places every example in a mini-batch by a draw of its own stream (as mid-training does)
        keys = rng.uniform(B, cfg.ppo_epochs) if cfg.mini_batches > 1 else None
        for epoch in range(cfg.ppo_epochs):
            for mini in mini_batch_rows(B, cfg.mini_batches, None if keys is None else keys[:, epoch]):
                mini = mini.tolist()
                ntp_tokens = mean_over_ranks(sum(len(prompts[i]) - 1 for i in mini))
                rollout_tokens = mean_over_ranks(len(mini) * rollout_tokens_each)
                yield [RefineMicroBatch(rollouts[i], ntp_tokens, rollout_tokens) for i in mini]

    # ----- the whole step ---------------------------------------------------------------------
    def updates(self, model: nn.Module, batch: QABatch, rng: StepRandom) -> Iterator[list[Any]]:
        self._step_metrics = {}
        yield from self.inner_updates(model, batch, rng)
        answer_tokens = mean_over_ranks(sum(len(a) for a in batch.answers))
        micros = []
        for i in range(0, len(batch), self.micro_batch_size):
            part = batch.select(list(range(i, min(len(batch), i + self.micro_batch_size))))
            micros.append(_AnswerSFT(*answer_sft_inputs(part, self.pad_id), answer_tokens))
        self._step_metrics["prompt_tokens"] = sum(len(p) for p in batch.prompts) / len(batch)
        self._step_metrics["answer_tokens"] = answer_tokens / len(batch)
        yield micros

    def loss(self, model: nn.Module, micro: Any) -> tuple[Tensor, dict[str, Any]]:
        if isinstance(micro, RefineMicroBatch):
            return self.refine.loss(model, micro)
        if isinstance(micro, _PromptNTP):
            out = model(micro.ids, attention_mask=micro.mask, labels=micro.ids.masked_fill(micro.mask == 0, IGNORE_INDEX),
                        return_logits=False, return_hidden="none")  # fmt: skip
            return out.loss * (out.num_tokens / micro.predicted), {"ntp_loss": (float(out.loss.detach()), out.num_tokens)}
        if isinstance(micro, _AnswerSFT):
            out = model(micro.ids, attention_mask=micro.mask, labels=micro.labels, return_logits=False, return_hidden="none")
            share = out.loss * (out.num_tokens / micro.answer_tokens)
            return share, {"answer_loss": (float(out.loss.detach()), out.num_tokens)}
        raise TypeError(f"unexpected micro-batch {type(micro).__name__}")

    def step_metrics(self) -> dict[str, float]:
        return self._step_metrics
