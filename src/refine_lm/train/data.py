"""Where a trainer's batches come from: a prepared corpus (``refine-lm data prepare``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ConfigError
from ..data import PreparedCorpus, SequenceDataset, StepBatchSampler
from ..ranks import world
from ..refine.ntp import WeightedTokens, next_token_metrics


@dataclass
class DataConfig:
    """Training and validation sequences.

    corpus: a prepared corpus directory.
    seq_len: tokens per training sequence (windows never cross a document boundary).
    exclude_sources: sources left out of training (e.g. ``[synthetic]`` for real text only).
    validation_sequences: held-out windows of the validation split (real text) used for the NTP
        loss and next-token accuracy at every validation.
    validation_seq_len: their length (0: seq_len).
    recall_sequences: held-out synthetic recall episodes scored for answer accuracy (0: none).
    answer_weight: loss weight of the answer tokens of synthetic episodes in training, against 1 for every
        other token (the loss is the weighted mean): answers are ~1% of the tokens, and a small model
        learns to look facts up far sooner when they weigh more. 1: plain next-token prediction.
    """

    corpus: str = "runs/data/default"
    seq_len: int = 1024
    exclude_sources: list[str] = field(default_factory=list)
    validation_sequences: int = 16
    validation_seq_len: int = 0
    recall_sequences: int = 16
    answer_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.answer_weight <= 0:
            raise ValueError(f"answer_weight must be > 0, got {self.answer_weight}")
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (a token and its successor), got {self.seq_len}")
        if self.validation_seq_len < 0 or self.validation_seq_len == 1:
            raise ValueError(f"validation_seq_len must be 0 (seq_len) or >= 2, got {self.validation_seq_len}")


class TrainingData:
    """The batches of every step (a function of the step: exact resume) and the validation sets.

    batch_size: the global batch. Under data parallelism (``rank`` / ``world_size``, by default this
    process's, see ``ranks.world``) ``batch_at`` gives this rank's disjoint share of it:
    rows ``[rank * b, (rank + 1) * b)`` with ``b = batch_size / world_size``.
    """

    def __init__(self, cfg: DataConfig, batch_size: int, seed: int, rank: int | None = None, world_size: int | None = None):
        self.cfg = cfg
        if rank is None or world_size is None:
            rank, world_size = world()
        if batch_size % world_size:
            raise ConfigError(f"batch_size {batch_size} (the global batch) does not split over {world_size} ranks")
        self.corpus = PreparedCorpus(cfg.corpus)
        self.train = SequenceDataset(self.corpus, "train", cfg.seq_len, exclude_sources=cfg.exclude_sources)
        self.sampler = StepBatchSampler(len(self.train), batch_size // world_size, seed, rank, world_size)
        val_len = cfg.validation_seq_len or cfg.seq_len
        self.validation = SequenceDataset(self.corpus, "validation", val_len, exclude_sources=["synthetic"], allow_empty=True)
        self.recall = None
        if cfg.recall_sequences and "synthetic" in self.corpus.source_names:
            episodes = SequenceDataset(self.corpus, "validation", val_len, sources=["synthetic"], allow_empty=True)
            self.recall = episodes if len(episodes) else None

    def tokenizer(self):
        return self.corpus.tokenizer()

    def batch_at(self, step: int) -> Tensor | WeightedTokens:
        indices = self.sampler.indices(step)
        ids = self.train.get_batch(indices)
        if self.cfg.answer_weight == 1.0:
            return ids
        weights = torch.ones(ids.shape, dtype=torch.float32)
        for row, i in enumerate(indices):
            weights[row, torch.as_tensor(self.train.answer_positions(int(i)), dtype=torch.long)] = self.cfg.answer_weight
        return WeightedTokens(ids, weights)

    def _spread(self, dataset: SequenceDataset, count: int) -> list[int]:
        """``count`` windows spread evenly over the dataset (deterministic)."""
        return np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int).tolist()

    def validation_windows(self) -> list[int]:
        return self._spread(self.validation, self.cfg.validation_sequences) if len(self.validation) else []

    def unigram_baseline(self) -> dict[str, float]:
        """Loss and perplexity on the validation windows of a unigram model of the training split
        (add-one smoothed): the floor any language model should beat by far."""
        counts = np.bincount(np.asarray(self.corpus.tokens("train")), minlength=len(self.tokenizer())).astype(np.float64) + 1.0
        logp = np.log(counts / counts.sum())
        windows = self.validation.get_batch(self.validation_windows()).numpy()[:, 1:]  # the predicted tokens
        loss = float(-logp[windows].mean())
        return {"unigram_loss": loss, "unigram_ppl": float(np.exp(loss))}

    def validator(self, batch_size: int = 4) -> Callable[[nn.Module], dict[str, float]]:
        """Held-out NTP loss / perplexity / accuracy (argmax and sampled), and recall-answer accuracy."""
        chosen = self.validation_windows()
        recall = self._spread(self.recall, self.cfg.recall_sequences) if self.recall is not None else []
        if self.cfg.validation_sequences and not chosen:
            warnings.warn(
                f"{self.cfg.corpus}: no validation document holds a window of {self.cfg.validation_seq_len or self.cfg.seq_len} "
                "tokens: "
                "held-out loss and accuracy will not be measured (use a shorter seq_len or longer documents)",
                stacklevel=2,
            )

        def validate(model: nn.Module) -> dict[str, float]:
            result: dict[str, float] = {}
            if chosen:
                batches = [self.validation.get_batch(chosen[i : i + batch_size]) for i in range(0, len(chosen), batch_size)]
                result.update(next_token_metrics(model, batches))
            if recall:
                result["recall_acc"] = recall_accuracy(model, self.recall, recall)
            return result

        return validate


@torch.no_grad()
def recall_accuracy(model: nn.Module, episodes: SequenceDataset, indices: list[int]) -> float:
    """Share of answer tokens of synthetic recall episodes that the model predicts (argmax)."""
    correct = total = 0
    for i in indices:
        positions = torch.as_tensor(episodes.answer_positions(i), dtype=torch.long)
        positions = positions[positions > 0]
        if not len(positions):
            continue
        ids = episodes[i][None].to(model.device)
        hidden = model(ids, return_logits=False).last_hidden_state[0, positions - 1]
        predicted = (hidden @ model.lm_head.weight.T).argmax(-1)
        correct += int((predicted == ids[0, positions]).sum())
        total += len(positions)
    return correct / max(total, 1)
