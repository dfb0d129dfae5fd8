"""Next-token prediction: the objective of pretraining and of the SFT baseline, and its validation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..ops.lm_head import token_logprobs, token_stats
from ..ranks import mean_over_ranks
from ..step_random import StepRandom, mini_batch_rows


class WeightedTokens:
    """Token ids ``[B, L]`` with a loss weight for every predicted token: ``weights[:, t]`` weighs predicting
    ``ids[:, t]`` (column 0 is never predicted). A batch the training loop can carry like a tensor."""

    def __init__(self, ids: Tensor, weights: Tensor):
        if weights.shape != ids.shape:
            raise ValueError(f"weights {tuple(weights.shape)} must have the shape of ids {tuple(ids.shape)}")
        self.ids, self.weights = ids, weights

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, rows) -> WeightedTokens:
        return WeightedTokens(self.ids[rows], self.weights[rows])

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    @property
    def device(self) -> torch.device:
        return self.ids.device

    def numel(self) -> int:
        return self.ids.numel()

    def to(self, device) -> WeightedTokens:
        return WeightedTokens(self.ids.to(device), self.weights.to(device))

    def split(self, size: int) -> list[WeightedTokens]:
        return [WeightedTokens(i, w) for i, w in zip(self.ids.split(size), self.weights.split(size))]


class NextTokenObjective:
    """Mean cross-entropy over every predicted token (of the global batch), accumulated over micro-batches.
    A :class:`WeightedTokens` batch makes it the weighted mean (e.g. answer tokens of retrieval episodes
    weighing more); ``ntp_loss`` is logged unweighted either way.

    ``mini_batches`` > 1 splits each batch into that many optimiser updates (to match the number of
    updates per batch of a REFINE run, for step-matched comparisons): sequence i goes to update
    ``i % mini_batches``.
    """

    def __init__(self, micro_batch_size: int, mini_batches: int = 1):
        self.micro_batch_size = micro_batch_size
        self.updates_per_step = mini_batches

    def updates(self, model: nn.Module, batch: Tensor, rng: StepRandom) -> Iterator[list[tuple[Tensor, float]]]:
        for rows in mini_batch_rows(batch.shape[0], self.updates_per_step):
            mini = batch[rows.to(batch.device)]
            if isinstance(mini, WeightedTokens):
                predicted = mean_over_ranks(float(mini.weights[:, 1:].sum()))
            else:
                predicted = mean_over_ranks(mini.shape[0] * (mini.shape[1] - 1))
            yield [(micro, predicted) for micro in mini.split(self.micro_batch_size)]

    def loss(self, model: nn.Module, micro: tuple[Tensor | WeightedTokens, float]) -> tuple[Tensor, dict[str, Any]]:
        ids, predicted = micro
        if isinstance(ids, WeightedTokens):
            out = model(ids.ids, return_logits=False, return_hidden="all")
            targets = ids.ids[:, 1:]
            logp = token_logprobs(out.last_hidden_state[:, :-1], model.lm_head.weight, targets, slice_len=model.logits_slice_len)
            loss = -(ids.weights[:, 1:].to(logp.dtype) * logp).sum() / predicted
            return loss, {"ntp_loss": (float(-logp.detach().mean()), targets.numel())}
        out = model(ids, labels=ids, return_logits=False, return_hidden="none")
        return out.loss * (out.num_tokens / predicted), {"ntp_loss": (float(out.loss.detach()), out.num_tokens)}


@torch.no_grad()
def next_token_metrics(model: nn.Module, batches: Iterable[Tensor], seed: int = 0) -> dict[str, float]:
    """Held-out NTP loss, perplexity and next-token accuracy: argmax, and sampled at temperature 1
    (what the paper reports). Logits are computed in slices."""
    generator = torch.Generator().manual_seed(seed)
    nll = correct_argmax = correct_sampled = count = 0.0
    for ids in batches:
        ids = ids.to(model.device)
        out = model(ids, return_logits=False, return_hidden="all")
        targets = ids[:, 1:]
        stats = token_stats(
            out.last_hidden_state[:, :-1],
            model.lm_head.weight,
            targets,
            slice_len=model.logits_slice_len,
            generator=generator if ids.device.type == "cpu" else torch.Generator(ids.device).manual_seed(seed),
        )
        nll -= float(stats.logprobs.sum())
        correct_argmax += float((stats.argmax == targets).sum())
        correct_sampled += float((stats.sampled == targets).sum())
        count += targets.numel()
    if not count:
        raise ValueError("next_token_metrics() got no tokens")
    loss = nll / count
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 50.0)),
        "acc_argmax": correct_argmax / count,
        "acc_sampled": correct_sampled / count,
    }
