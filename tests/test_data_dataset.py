"""Training sequences: the document-boundary rule, step-addressed shuffling, resume and data-parallel shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refine_lm.data import (
    DataError,
    PreparedCorpus,
    SequenceDataset,
    StepBatchSampler,
    copy_tokenizer,
    load_tokenizer,
    prepare_corpus,
)

from .data_helpers import small_config, write_text_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("seq")
    write_text_corpus(root / "text", n_docs=40)
    return PreparedCorpus(prepare_corpus(small_config(root / "text", root / "out")))


def oracle_windows(corpus: PreparedCorpus, split: str, seq_len: int, exclude=()):
    """Windows cut document by document in plain Python: (doc id, start, tokens)."""
    out = []
    for doc in corpus.documents(split, exclude_sources=exclude):
        for start in range(0, len(doc.tokens) - seq_len + 1, seq_len):
            out.append((doc.doc_id, start, doc.tokens[start : start + seq_len].astype(np.int64)))
    return out


@pytest.mark.parametrize("seq_len", [2, 37, 256, 512, 1024])
def test_windows_never_cross_a_document_boundary(corpus, seq_len):
    ds = SequenceDataset(corpus, "train", seq_len)
    expected = oracle_windows(corpus, "train", seq_len)
    assert len(ds) == len(expected)
    for i, (doc_id, start, tokens) in enumerate(expected):
        assert ds.window(i) == (doc_id, start)
        assert torch.equal(ds[i], torch.from_numpy(tokens)) and ds[i].dtype == torch.long
    index = corpus.index("train")
    ends = index[ds.window_doc, 0] + index[ds.window_doc, 1]
    assert (ds.starts >= index[ds.window_doc, 0]).all() and (ds.starts + seq_len <= ends).all()
    lengths = index[:, 1]
    assert ds.short_tokens == lengths[lengths < seq_len].sum() and len(ds.short_documents) == (lengths < seq_len).sum()
    assert ds.tail_tokens == (lengths[lengths >= seq_len] % seq_len).sum()
    assert len(ds) * seq_len + ds.short_tokens + ds.tail_tokens == lengths.sum()  # every token accounted for


def test_short_documents_are_counted_and_named(corpus):
    ds = SequenceDataset(corpus, "train", 1024, exclude_sources=["synthetic"])
    text = ds.describe()
    assert f"{len(ds.short_documents)} shorter documents skipped ({ds.short_tokens:,} tokens" in text
    assert "skipped e.g. toy/doc" in text and "tokens)" in text
    longest = corpus.index("test")[:, 1].max()
    with pytest.raises(DataError, match=f"no document has {longest + 1} tokens or more \\(longest: {longest}\\)"):
        SequenceDataset(corpus, "test", int(longest) + 1)
    assert len(SequenceDataset(corpus, "test", int(longest) + 1, allow_empty=True)) == 0


def test_windows_that_cut_synthetic_episodes_are_flagged(corpus):
    assert "windows cut episodes" in SequenceDataset(corpus, "train", 300).describe()
    assert "windows cut episodes" not in SequenceDataset(corpus, "train", 1024).describe()
    assert "windows cut episodes" not in SequenceDataset(corpus, "train", 300, exclude_sources=["synthetic"]).describe()


def test_sources_can_be_selected(corpus):
    real = SequenceDataset(corpus, "train", 256, exclude_sources=["synthetic"])
    synthetic = SequenceDataset(corpus, "train", 256, sources=["synthetic"])
    both = SequenceDataset(corpus, "train", 256)
    assert len(real) + len(synthetic) == len(both)
    assert set(real.tokens_by_source()) == {"toy"} and set(synthetic.tokens_by_source()) == {"synthetic"}
    with pytest.raises(ValueError, match="unknown source 'nope'"):
        SequenceDataset(corpus, "train", 256, sources=["nope"])


def test_answer_positions_point_at_the_recall_answers(corpus):
    tokenizer = corpus.tokenizer()
    ds = SequenceDataset(corpus, "validation", 512, sources=["synthetic"])
    for i in range(len(ds)):
        positions = ds.answer_positions(i)
        runs = np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1)
        assert len(runs) == 3  # facts=2: one asked mid-episode, both at the end
        for run in runs:
            answer = tokenizer.decode(ds[i][run].tolist())
            prompt = tokenizer.decode(ds[i][: run[0]].tolist())
            assert answer.startswith(" ") and prompt.rstrip().endswith(("Answer:", "is", "A:", "was"))
            assert answer.strip() in prompt  # the value was stated earlier in the window
    real = SequenceDataset(corpus, "validation", 64, exclude_sources=["synthetic"])
    assert len(real.answer_positions(0)) == 0


def test_sampler_is_deterministic_resumable_and_covers_an_epoch_once():
    a = StepBatchSampler(103, batch_size=4, seed=3, num_steps=60)
    b = StepBatchSampler(103, batch_size=4, seed=3, num_steps=60)
    steps = list(a)
    assert steps == list(b) and steps != list(StepBatchSampler(103, batch_size=4, seed=4, num_steps=60))
    assert list(StepBatchSampler(103, batch_size=4, seed=3, start_step=37, num_steps=23)) == steps[37:]
    assert a.steps_per_epoch == 25
    epoch0 = np.concatenate(steps[:25])
    assert len(set(epoch0.tolist())) == 100  # no repeats; the 3 left over wait for the next epoch
    assert not np.array_equal(np.concatenate(steps[25:50]), epoch0)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_are_disjoint_and_complete(world_size):
    full = StepBatchSampler(200, batch_size=5 * world_size, seed=1, num_steps=30)
    shards = [
        list(StepBatchSampler(200, batch_size=5, seed=1, rank=r, world_size=world_size, num_steps=30)) for r in range(world_size)
    ]
    for step, global_batch in enumerate(full):
        parts = [shard[step] for shard in shards]
        together = [i for part in parts for i in part]
        assert together == global_batch  # rank r takes the r-th slice of the global batch
        assert len(set(together)) == 5 * world_size


def test_batches_resume_exactly_and_work_with_a_dataloader(corpus):
    ds = SequenceDataset(corpus, "train", 128)
    run = list(ds.batches(batch_size=4, seed=0, num_steps=12))
    resumed = list(ds.batches(batch_size=4, seed=0, start_step=7, num_steps=5))
    assert all(torch.equal(x, y) for x, y in zip(run[7:], resumed)) and len(resumed) == 5
    assert run[0].shape == (4, 128) and run[0].dtype == torch.long
    loader = torch.utils.data.DataLoader(ds, batch_sampler=StepBatchSampler(len(ds), 4, seed=0, num_steps=12))
    assert all(torch.equal(x, y) for x, y in zip(loader, run))
    with pytest.raises(DataError, match="fewer than one global batch"):
        StepBatchSampler(len(ds), batch_size=len(ds), world_size=2)


def test_held_out_documents_for_evaluation_and_tokenizer_next_to_checkpoints(corpus, tmp_path):
    docs = list(corpus.documents("test", exclude_sources=["synthetic"], min_tokens=300))
    assert docs and all(len(d.tokens) >= 300 and d.source == "toy" for d in docs)
    copy_tokenizer(corpus.path, tmp_path / "ckpt")
    tok = load_tokenizer(tmp_path / "ckpt")
    assert tok.decode(docs[0].tokens.tolist()) == corpus.tokenizer().decode(docs[0].tokens.tolist())
