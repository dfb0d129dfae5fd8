"""Next-token prediction: the objective of pretraining and of the SFT baseline, and its validation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from ..ops.lm_head import token_stats


class NextTokenObjective:
    """Mean cross-entropy over every predicted token of the batch, accumulated over micro-batches."""

    updates_per_step = 1

    def __init__(self, micro_batch_size: int):
        self.micro_batch_size = micro_batch_size

    def updates(self, model: nn.Module, batch: Tensor, generator: torch.Generator) -> Iterator[list[tuple[Tensor, int]]]:
        predicted = batch.shape[0] * (batch.shape[1] - 1)
        yield [(micro, predicted) for micro in batch.split(self.micro_batch_size)]

    def loss(self, model: nn.Module, micro: tuple[Tensor, int]) -> tuple[Tensor, dict[str, float]]:
        ids, predicted = micro
        out = model(ids, labels=ids, return_logits=False, return_hidden="none")
        return out.loss * (out.num_tokens / predicted), {"loss": float(out.loss.detach()), "weight": out.num_tokens}


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
