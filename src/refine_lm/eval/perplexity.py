"""Perplexity and next-token accuracy on long documents, by position in the context.

Each document is read once (in the model's segments); the statistics of every next-token
distribution come from the sliced LM-head functions (``token_stats``), never a full ``[B, L, V]``
logits tensor. Per position bucket: perplexity, accuracy of the argmax, accuracy of a token sampled
at temperature 1 (seeded per document, so results do not depend on batching), and mean entropy.
Does the model still predict well late in the context?
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..ops.dtypes import autocast, resolve_precision
from ..ops.lm_head import IGNORE_INDEX, token_stats
from ..ops.sampling import sample_tokens
from .runner import ExampleCache

STAT_FIELDS = ("tokens", "nll", "argmax_correct", "sampled_correct", "entropy")


@dataclass
class PerplexityConfig:
    """Settings of the ``perplexity`` task.

    path: held-out documents: a ``.txt`` file (one document), a JSONL/JSON/parquet file with a
        ``text`` column, or a directory of them.
    length: tokens read per document (longer ones are cut to their first ``length`` tokens);
        0 means the largest of the evaluation's ``lengths``.
    buckets: upper edges of the position buckets (a position is the index of the predicted token);
        empty means powers of two from 256 up to ``length``.
    """

    path: str | None = None
    length: int = 0
    buckets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.length < 0:
            raise ValueError("perplexity.length must be >= 0")
        if self.buckets != sorted(set(self.buckets)) or any(b < 1 for b in self.buckets):
            raise ValueError(f"perplexity.buckets must be increasing positive integers, got {self.buckets}")


def bucket_edges(length: int, buckets: Sequence[int] = ()) -> list[int]:
    """Upper edges ``[e_1 < e_2 < ... = length]`` of the buckets ``[0, e_1), [e_1, e_2), ...``."""
    edges = [b for b in buckets if b < length]
    if not buckets:
        edge = 256
        while edge < length:
            edges.append(edge)
            edge *= 2
    return [*edges, length]


def position_stats(
    model,
    docs: Sequence[list[int]],
    edges: Sequence[int],
    *,
    doc_seeds: Sequence[int],
    slice_len: int = 2048,
) -> list[list[dict[str, float]]]:
    """Per document, per bucket: sums of tokens, NLL, argmax hits, sampled hits and entropy.

    ``docs`` are token id lists (read together as one right-padded batch); position ``t`` predicts
    ``docs[b][t]`` from the tokens before it (t >= 1).
    """
    device = next(model.parameters()).device
    width = max(len(d) for d in docs)
    ids = torch.zeros((len(docs), width), dtype=torch.long)
    mask = torch.zeros((len(docs), width), dtype=torch.long)
    for row, doc in enumerate(docs):
        ids[row, : len(doc)] = torch.tensor(doc)
        mask[row, : len(doc)] = 1
    ids, mask = ids.to(device), mask.to(device)
    weight = model.get_output_embeddings().weight
    with torch.no_grad():
        hidden = model(ids, mask, return_logits=False, return_hidden="all").last_hidden_state[:, :-1]
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
        stats = token_stats(hidden, weight, targets, slice_len=slice_len)
        results = []
        for row, doc in enumerate(docs):
            n = len(doc) - 1
            generator = torch.Generator(device=device).manual_seed(doc_seeds[row])
            sampled = torch.cat(
                [
                    sample_tokens(hidden[row, s : min(s + slice_len, n)] @ weight.T, do_sample=True, generator=generator)[0]
                    for s in range(0, n, slice_len)
                ]
            )
            target = targets[row, :n]
            per_position = {
                "nll": -stats.logprobs[row, :n].double(),
                "argmax_correct": (stats.argmax[row, :n] == target).double(),
                "sampled_correct": (sampled == target).double(),
                "entropy": stats.entropy[row, :n].double(),
            }
            buckets, lo = [], 0
            positions = torch.arange(1, n + 1, device=device)  # index of the predicted token
            for hi in edges:
                inside = (positions >= lo) & (positions < hi)
                bucket = {"tokens": float(inside.sum())}
                bucket.update({k: float(v[inside].sum()) for k, v in per_position.items()})
                buckets.append(bucket)
                lo = hi
            results.append(buckets)
    return results


def evaluate_perplexity(
    model,
    tokenizer,
    texts: Sequence[str],
    length: int,
    edges: Sequence[int],
    *,
    batch_size: int = 1,
    seed: int = 0,
    cache: ExampleCache | None = None,
    progress: bool = True,
    precision: str = "auto",
) -> list[dict[str, Any]]:
    """One record per document (``id``, ``tokens``, ``buckets``), reusing cached ones."""
    docs = []
    for index, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:length]
        if len(ids) >= 2:
            docs.append((f"doc{index}", ids, text))
    if not docs:
        raise ValueError("perplexity: no document has at least 2 tokens")
    keys = [cache.key("perplexity", doc_id, text, length, list(edges)) if cache else doc_id for doc_id, _, text in docs]
    done = {k: cache.records[k] for k in keys if cache and k in cache.records}
    pending = sorted((i for i, k in enumerate(keys) if k not in done), key=lambda i: -len(docs[i][1]))
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    bar = tqdm(total=len(pending), desc="perplexity", disable=not progress, leave=False)
    for start in range(0, len(pending), batch_size):
        batch = pending[start : start + batch_size]
        seeds = [seed * 1_000_003 + zlib.crc32(docs[i][0].encode()) for i in batch]
        with autocast(precision, device):
            stats = position_stats(model, [docs[i][1] for i in batch], edges, doc_seeds=seeds)
        records = [
            {"key": keys[i], "task": "perplexity", "id": docs[i][0], "tokens": len(docs[i][1]), "buckets": s}
            for i, s in zip(batch, stats)
        ]
        for record in records:
            done[record["key"]] = record
        if cache is not None:
            cache.add(records)
        bar.update(len(batch))
    bar.close()
    return [done[k] for k in keys]


def summarise_perplexity(records: Sequence[dict[str, Any]], edges: Sequence[int]) -> dict[str, Any]:
    """Per bucket and overall: perplexity, argmax / sampled accuracy (%), mean entropy (nats), tokens."""

    def finish(sums: dict[str, float]) -> dict[str, float]:
        n = sums["tokens"]
        if not n:
            return {"tokens": 0}
        return {
            "tokens": int(n),
            "perplexity": math.exp(sums["nll"] / n),
            "argmax_accuracy": 100 * sums["argmax_correct"] / n,
            "sampled_accuracy": 100 * sums["sampled_correct"] / n,
            "entropy": sums["entropy"] / n,
        }

    per_bucket = [{k: sum(r["buckets"][b][k] for r in records) for k in STAT_FIELDS} for b in range(len(edges))]
    total = {k: sum(b[k] for b in per_bucket) for k in STAT_FIELDS}
    lows = [0, *edges[:-1]]
    return {
        "documents": len(records),
        "overall": finish(total),
        "buckets": [{"from": lo, "to": hi, **finish(b)} for lo, hi, b in zip(lows, edges, per_bucket)],
    }
