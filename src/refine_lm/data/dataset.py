"""Reading a prepared corpus: documents, fixed-length training sequences, and step-addressed batches.

**Document-boundary rule.** A sequence never crosses a document boundary. Each document is cut
into consecutive windows of ``seq_len`` tokens starting at its first token; the last partial
window (the *tail*) and documents shorter than ``seq_len`` are not used, and both are counted
(``SequenceDataset.describe``). Why: a fast-weight model reads every training sequence from a
fresh (zero) memory, so a window must be one piece of one text; REFINE scores rollouts against
the true continuation inside the window, which must come from the same document; and no
separator token is needed, because nothing is packed. Synthetic recall episodes have lengths
that divide the usual window lengths, so they are never cut (see ``synthetic.py``).

**Batches.** ``StepBatchSampler`` maps an optimiser step to the indices of its batch: epoch ``e``
is the permutation ``default_rng([seed, e])`` of all windows, step ``s`` takes the ``s``-th slice
of ``batch_size * world_size`` windows of it and rank ``r`` its ``r``-th part. So batches depend
only on (seed, step, rank, world_size): resuming at a step is exact, ranks are disjoint and
together cover the global batch, and an epoch never repeats a window (the last
``len % (batch_size * world_size)`` windows of each epoch's permutation wait for the next epoch).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .sources import DataError
from .tokenizer import load_tokenizer

SPLITS = ("train", "validation", "test")


@dataclass
class CorpusDocument:
    """One document of a prepared split: its id, source, tokens (a read-only memmap view) and answer spans."""

    doc_id: str
    source: str
    tokens: np.ndarray
    answers: list[tuple[int, int]] = field(default_factory=list)  # synthetic recall answers, token spans [start, end)


class PreparedCorpus:
    """A directory written by ``refine-lm data prepare`` (see ``prepare.py`` for the format)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a prepared corpus: no manifest.json (run `refine-lm data prepare`)")
        self.manifest = json.loads(manifest_path.read_text())
        self.dtype = np.dtype(self.manifest["token_dtype"])
        self.source_names: list[str] = self.manifest["source_names"]
        self._tokens: dict[str, np.ndarray] = {}
        self._index: dict[str, np.ndarray] = {}
        self._records: dict[str, list[dict]] = {}

    def _check(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (splits: {', '.join(SPLITS)})")

    def tokens(self, split: str) -> np.ndarray:
        """All token ids of ``split``, documents back to back (a read-only memmap)."""
        self._check(split)
        if split not in self._tokens:
            path = self.path / f"{split}.tokens"
            empty = path.stat().st_size == 0
            self._tokens[split] = np.zeros(0, self.dtype) if empty else np.memmap(path, dtype=self.dtype, mode="r")
        return self._tokens[split]

    def index(self, split: str) -> np.ndarray:
        """int64 ``[documents, 3]``: offset, length, source number of each document of ``split``."""
        self._check(split)
        if split not in self._index:
            self._index[split] = np.load(self.path / f"{split}.index.npy")
        return self._index[split]

    def records(self, split: str) -> list[dict]:
        """Per document of ``split``: ``{"id", "source", "tokens", ...}`` (synthetic ones add ``answers``)."""
        self._check(split)
        if split not in self._records:
            with open(self.path / f"{split}.docs.jsonl", encoding="utf-8") as f:
                self._records[split] = [json.loads(line) for line in f]
        return self._records[split]

    def source_mask(self, split: str, sources: Sequence[str] | None = None, exclude_sources: Sequence[str] = ()) -> np.ndarray:
        """Which documents of ``split`` come from ``sources`` (all when None) and not from ``exclude_sources``."""
        for name in [*(sources or ()), *exclude_sources]:
            if name not in self.source_names:
                raise ValueError(f"unknown source {name!r} (sources of {self.path}: {', '.join(self.source_names)})")
        numbers = self.index(split)[:, 2]
        keep = (
            np.ones(len(numbers), dtype=bool)
            if sources is None
            else np.isin(numbers, [self.source_names.index(s) for s in sources])
        )
        return keep & ~np.isin(numbers, [self.source_names.index(s) for s in exclude_sources])

    def document(self, split: str, i: int) -> CorpusDocument:
        offset, length, number = self.index(split)[i]
        record = self.records(split)[i]
        answers = [tuple(a) for a in record.get("answers", ())]
        return CorpusDocument(record["id"], self.source_names[number], self.tokens(split)[offset : offset + length], answers)

    def documents(
        self, split: str, sources: Sequence[str] | None = None, exclude_sources: Sequence[str] = (), min_tokens: int = 0
    ) -> Iterator[CorpusDocument]:
        """The documents of ``split`` in stored order, e.g. held-out long documents for evaluation:
        ``corpus.documents("test", exclude_sources=["synthetic"], min_tokens=16384)``."""
        mask = self.source_mask(split, sources, exclude_sources) & (self.index(split)[:, 1] >= min_tokens)
        for i in np.flatnonzero(mask):
            yield self.document(split, int(i))

    def tokenizer(self):
        """The corpus tokenizer (a Hugging Face tokenizer)."""
        return load_tokenizer(self.path / "tokenizer")


class SequenceDataset(torch.utils.data.Dataset):
    """Fixed-length windows of the documents of one split; ``ds[i]`` is a ``LongTensor[seq_len]``.

    Windows never cross a document boundary (see the module docstring). Memory-mapped: building
    the window table costs O(documents), reading a window O(seq_len).

    corpus: a ``PreparedCorpus`` or its directory.
    split: train, validation or test.
    seq_len: tokens per sequence.
    sources / exclude_sources: restrict to documents of these sources (e.g. ``exclude_sources=["synthetic"]``).
    allow_empty: return an empty dataset instead of raising when no document is long enough.
    """

    def __init__(
        self,
        corpus: PreparedCorpus | str | Path,
        split: str,
        seq_len: int,
        sources: Sequence[str] | None = None,
        exclude_sources: Sequence[str] = (),
        allow_empty: bool = False,
    ):
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {seq_len}")
        self.corpus = corpus if isinstance(corpus, PreparedCorpus) else PreparedCorpus(corpus)
        self.split, self.seq_len = split, seq_len
        self.tokens = self.corpus.tokens(split)
        index = self.corpus.index(split)
        self.documents = np.flatnonzero(self.corpus.source_mask(split, sources, exclude_sources))
        lengths = index[self.documents, 1]
        counts = lengths // seq_len
        self.window_doc = np.repeat(self.documents, counts)  # document number of each window
        first = np.repeat(np.cumsum(counts) - counts, counts)
        self.window_pos = (np.arange(len(self.window_doc)) - first) * seq_len  # start of the window inside its document
        self.starts = index[self.window_doc, 0] + self.window_pos  # start in the split's token file
        short = counts == 0
        self.total_tokens = int(lengths.sum())
        self.short_documents = self.documents[short]
        self.short_tokens = int(lengths[short].sum())
        self.tail_tokens = int((lengths[~short] % seq_len).sum())
        if len(self.starts) == 0 and not allow_empty:
            longest = int(lengths.max()) if len(lengths) else 0
            raise DataError(
                f"{self.corpus.path} {split}: no document has {seq_len} tokens or more (longest: {longest}); {self.describe()}"
            )

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> torch.Tensor:
        start = int(self.starts[i])
        return torch.from_numpy(self.tokens[start : start + self.seq_len].astype(np.int64))

    def get_batch(self, indices: Sequence[int]) -> torch.Tensor:
        """``LongTensor[len(indices), seq_len]``."""
        if len(indices) == 0:
            return torch.empty(0, self.seq_len, dtype=torch.long)
        rows = [self.tokens[s : s + self.seq_len] for s in self.starts[np.asarray(indices)]]
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def window(self, i: int) -> tuple[str, int]:
        """``(document id, start inside the document)`` of window ``i``."""
        return self.corpus.records(self.split)[int(self.window_doc[i])]["id"], int(self.window_pos[i])

    def answer_positions(self, i: int) -> np.ndarray:
        """Positions in window ``i`` of the tokens of synthetic recall answers (empty for real text).

        Recall accuracy = how often the model predicts these tokens (the prediction for position p
        is made at p - 1)."""
        record = self.corpus.records(self.split)[int(self.window_doc[i])]
        lo = int(self.window_pos[i])
        spans = [
            (max(s, lo), min(e, lo + self.seq_len)) for s, e in record.get("answers", ()) if e > lo and s < lo + self.seq_len
        ]
        return np.concatenate([np.arange(s, e) - lo for s, e in spans]) if spans else np.zeros(0, dtype=np.int64)

    def tokens_by_source(self) -> dict[str, int]:
        """Tokens in windows, per source (e.g. the actual share of synthetic episodes)."""
        numbers = self.corpus.index(self.split)[self.window_doc, 2]
        return {self.corpus.source_names[n]: int(c) * self.seq_len for n, c in zip(*np.unique(numbers, return_counts=True))}

    def describe(self, brief: bool = False) -> str:
        """What the windows use and what the boundary rule leaves out, with counts (and, unless brief, examples)."""
        total = max(self.total_tokens, 1)
        text = (
            f"{len(self.documents) - len(self.short_documents)} of {len(self.documents)} documents give {len(self):,} "
            f"windows of {self.seq_len}; {len(self.short_documents)} shorter documents skipped "
            f"({self.short_tokens:,} tokens, {100 * self.short_tokens / total:.1f}%), "
            f"{self.tail_tokens:,} tokens of document tails unused ({100 * self.tail_tokens / total:.1f}%)"
        )
        episode = self.corpus.manifest.get("synthetic", {}).get("episode_tokens")
        has_synthetic = (
            "synthetic" in self.corpus.source_names
            and (self.corpus.index(self.split)[self.documents, 2] == self.corpus.source_names.index("synthetic")).any()
        )
        if has_synthetic and episode and self.seq_len % episode:
            text += f"; note: seq_len is not a multiple of the synthetic episode length {episode}, so windows cut episodes"
        if not brief and len(self.short_documents):
            records, index = self.corpus.records(self.split), self.corpus.index(self.split)
            examples = ", ".join(f"{records[d]['id']} ({index[d, 1]} tokens)" for d in self.short_documents[:5])
            text += f"; skipped e.g. {examples}"
        return text

    def batches(
        self,
        batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        num_steps: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[torch.Tensor]:
        """``LongTensor[batch_size, seq_len]`` for steps ``start_step, start_step + 1, ...`` (see ``StepBatchSampler``)."""
        sampler = StepBatchSampler(len(self), batch_size, seed, rank, world_size, start_step, num_steps)
        for indices in sampler:
            yield self.get_batch(indices)


class StepBatchSampler:
    """Indices of the batch of each optimiser step: seeded, resumable at any step, sharded by rank.

    Usable as ``torch.utils.data.DataLoader(dataset, batch_sampler=StepBatchSampler(...))``.

    num_sequences: dataset length. batch_size: per rank. seed: shuffling seed.
    rank / world_size: this process's shard of every global batch.
    start_step: first step yielded. num_steps: how many (None: forever).
    """

    def __init__(
        self,
        num_sequences: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
        num_steps: int | None = None,
    ):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or start_step < 0:
            raise ValueError(
                "need batch_size >= 1, world_size >= 1, 0 <= rank < world_size, start_step >= 0; "
                f"got {batch_size}, {world_size}, {rank}, {start_step}"
            )
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = num_sequences // self.global_batch
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{num_sequences} sequences are fewer than one global batch of {self.global_batch} (batch_size x world_size)"
            )
        self.num_sequences, self.batch_size, self.seed = num_sequences, batch_size, seed
        self.rank, self.start_step, self.num_steps = rank, start_step, num_steps
        self._epoch, self._permutation = -1, np.zeros(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._permutation = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)
        return self._permutation

    def indices(self, step: int) -> np.ndarray:
        """This rank's indices at ``step``."""
        epoch, b = divmod(step, self.steps_per_epoch)
        batch = self.permutation(epoch)[b * self.global_batch : (b + 1) * self.global_batch]
        return batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while self.num_steps is None or step < self.start_step + self.num_steps:
            yield self.indices(step).tolist()
            step += 1

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError("an endless StepBatchSampler (num_steps=None) has no length")
        return self.num_steps
