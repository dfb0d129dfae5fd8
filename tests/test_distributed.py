"""Data-parallel training under torchrun (gloo on CPU): N ranks compute what one process computes.

The runs are a few REFINE and NTP steps of a tiny float64 DeltaNet (``distributed_run.py``): global
batch 8, two mini-batches and two PPO epochs per batch, micro-batches of one sequence.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from refine_lm.step_random import StepRandom, mini_batch_rows
from refine_lm.train.checkpoint import list_checkpoints
from refine_lm.train.metrics import read_metrics

from .distributed_run import main as run_in_process

HERE = Path(__file__).parent
SCRIPT = HERE / "distributed_run.py"
SRC = HERE.parent / "src"


def launch(out: Path, ranks: int, *args: str, torchrun: bool = True) -> subprocess.CompletedProcess:
    """``distributed_run.py`` under torchrun with ``ranks`` processes (or alone)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    runner = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if torchrun else []
    return subprocess.run([sys.executable, *runner, str(SCRIPT), str(out), *args], capture_output=True, text=True, env=env)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(list_checkpoints(run)[-1] / "model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), (name, float((a[name] - b[name]).abs().max()))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one-process")
    run_in_process(str(out), parallel="none")
    return out


@pytest.fixture(scope="module")
def two_ranks_ddp(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    done = launch(out, 2)  # parallel=auto: DDP under torchrun
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["refine", "ntp", "post"])
def test_two_ddp_ranks_end_with_the_weights_of_one_process(one_process, two_ranks_ddp, method):
    assert_same_weights(final_weights(one_process / method), final_weights(two_ranks_ddp / method), atol=1e-10)
    one = read_metrics(one_process / method / "metrics.jsonl")
    two = read_metrics(two_ranks_ddp / method / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4]  # rank 0 alone logs
    for a, b in zip(one, two):  # losses and gradient norms are those of the global batch
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-10) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-9)
    assert two[0]["compute_tokens"] == one[0]["compute_tokens"]  # summed over ranks
    assert [p.name for p in list_checkpoints(two_ranks_ddp / method)] == ["checkpoint-0000002", "checkpoint-0000004"]


@pytest.mark.slow
def test_killed_fsdp_run_resumes_with_two_ranks_or_one_to_the_weights_of_one_process(one_process, tmp_path):
    """FSDP2 (2 ranks) ends where one process ends, writes plain checkpoints, and a killed run resumes with
    the same number of ranks or with a single process."""
    killed = launch(tmp_path / "two", 2, "--parallel", "fsdp", "--methods", "ntp,refine", "--kill-at", "2")
    assert killed.returncode != 0  # REFINE died during step 3, after NTP finished
    assert_same_weights(final_weights(one_process / "ntp"), final_weights(tmp_path / "two" / "ntp"), atol=1e-10)
    assert [p.name for p in list_checkpoints(tmp_path / "two" / "refine")] == ["checkpoint-0000002"]
    shutil.copytree(tmp_path / "two", tmp_path / "alone")

    resumed = launch(tmp_path / "two", 2, "--parallel", "fsdp", "--methods", "refine")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout and "written by 2 rank(s)" in resumed.stdout
    run = tmp_path / "two" / "refine"
    assert_same_weights(final_weights(one_process / "refine"), final_weights(run), atol=1e-10)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4]

    # the checkpoint is an ordinary Hugging Face directory, its optimiser state the single-process one
    from transformers import AutoModelForCausalLM

    import refine_lm  # noqa: F401  (registers the Auto classes)

    final = list_checkpoints(run)[-1]
    assert AutoModelForCausalLM.from_pretrained(final).config.model_type == "delta_net"
    sharded = torch.load(final / "trainer_state.pt", weights_only=False)
    single = torch.load(list_checkpoints(one_process / "refine")[-1] / "trainer_state.pt", weights_only=False)
    assert sharded["world_size"] == 2
    groups = [[g["params"] for g in state["optimizer"]["param_groups"]] for state in (sharded, single)]
    assert groups[0] == groups[1]
    for i, state in single["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.allclose(sharded["optimizer"]["state"][i][key].double(), value.double(), atol=1e-10), (i, key)

    # one plain process continues the two-rank run: the same global batch, the same per-sequence draws
    alone = launch(tmp_path / "alone", 1, "--methods", "refine", "--parallel", "none", torchrun=False)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert_same_weights(final_weights(one_process / "refine"), final_weights(tmp_path / "alone" / "refine"), atol=1e-10)


@pytest.fixture(scope="module")
def corpus_model(tiny_corpus, tmp_path_factory) -> Path:
    """A tiny DeltaNet saved with the tiny corpus's tokenizer, as ``refine-lm train model=DIR`` expects."""
    from refine_lm.data import PreparedCorpus
    from refine_lm.models.registry import build_model

    tokenizer = PreparedCorpus(tiny_corpus).tokenizer()
    special = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("pad", "bos", "eos")}
    path = tmp_path_factory.mktemp("base")
    build_model("delta_net", "tiny", seed=0, vocab_size=len(tokenizer), **special).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.slow
def test_train_command_under_torchrun_matches_one_process(tiny_corpus, corpus_model, tmp_path):
    """``torchrun --nproc_per_node 2 -m refine_lm train``: each rank reads half of every global batch of the
    prepared corpus, and the two ranks end where one process ends; rank 0 alone logs, validates and writes
    the checkpoint."""
    from refine_lm.cli import main

    args = ["train", "--method", "refine", f"model={corpus_model}", f"data.corpus={tiny_corpus}", "data.seq_len=128"]
    args += ["loop.steps=2", "loop.batch_size=4", "loop.micro_batch_size=1", "refine.num_chunks=2", "refine.margin=8"]
    args += ["optim.lr=1e-3", "data.validation_sequences=2", "data.recall_sequences=0", "loop.precision=fp32"]
    assert main([*args, f"output_dir={tmp_path / 'one'}"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "refine_lm"]
    done = subprocess.run([*torchrun, *args, f"output_dir={tmp_path / 'two'}"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(final_weights(tmp_path / "one"), final_weights(tmp_path / "two"), atol=1e-5)
    assert (list_checkpoints(tmp_path / "two")[-1] / "tokenizer.json").is_file()
    records = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in records] == [(1, "train"), (2, "train"), (2, "validation")]
    expected = read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert records[-1]["loss"] == pytest.approx(expected[-1]["loss"], rel=1e-4)


# ----- the pieces that make ranks agree (in process) -------------------------------------------------


def test_each_sequence_draws_from_its_own_stream():
    whole = StepRandom(seed=3, step=7)
    first = whole.uniform(4, 2)
    assert torch.equal(StepRandom(3, 7, offset=2).uniform(2, 2), first[2:])  # rows 2, 3 held by another rank
    again = whole.uniform(4, 5)  # later draws continue each stream
    later = StepRandom(3, 7, offset=1)
    later.uniform(3, 2)
    assert torch.equal(later.uniform(3, 5), again[1:])
    assert not torch.equal(first[0], first[1]) and not torch.equal(first, StepRandom(3, 8).uniform(4, 2))
    one_at_a_time = StepRandom(3, 7)
    rows = [one_at_a_time.view(i, 1).uniform(1, 2) for i in range(4)]  # e.g. a sequence per call
    assert torch.equal(torch.cat(rows), first)
    assert torch.equal(one_at_a_time.uniform(4, 5), again)  # the views advanced the same streams


def test_mini_batches_are_the_same_for_any_number_of_ranks():
    keys = torch.rand(12, generator=torch.Generator().manual_seed(0))
    one = mini_batch_rows(12, 3, keys)
    assert sorted(torch.cat(one).tolist()) == list(range(12)) and all(len(m) == 4 for m in one)
    for ranks in (2, 4):  # each rank's own split, in global row numbers
        per_rank = 12 // ranks
        parts = [mini_batch_rows(per_rank, 3, keys[r * per_rank : (r + 1) * per_rank]) for r in range(ranks)]
        for m in range(3):
            rows = sorted(int(i) + r * per_rank for r in range(ranks) for i in parts[r][m])
            assert rows == sorted(one[m].tolist())
    assert [m.tolist() for m in mini_batch_rows(6, 2)] == [[0, 2, 4], [1, 3, 5]]
    with pytest.raises(ValueError, match="does not split into 4 mini-batches"):
        mini_batch_rows(6, 4)


def test_data_shards_are_disjoint_and_complete(tiny_corpus):
    from refine_lm.train.data import DataConfig, TrainingData

    cfg = DataConfig(corpus=str(tiny_corpus), seq_len=64, validation_sequences=0, recall_sequences=0)
    whole = TrainingData(cfg, batch_size=6, seed=1, rank=0, world_size=1)
    shards = [TrainingData(cfg, batch_size=6, seed=1, rank=r, world_size=3) for r in range(3)]
    steps_per_epoch = whole.sampler.steps_per_epoch
    for step in range(steps_per_epoch + 2):  # into the second epoch
        parts = [s.sampler.indices(step) for s in shards]
        assert all(len(p) == 2 for p in parts)
        assert np.array_equal(np.concatenate(parts), whole.sampler.indices(step))  # rank r: rows [2r, 2r + 2)
        assert torch.equal(torch.cat([s.batch_at(step) for s in shards]), whole.batch_at(step))
    epoch = np.concatenate([whole.sampler.indices(s) for s in range(steps_per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch)  # no window twice in an epoch
    with pytest.raises(ValueError, match="does not split over 4 ranks"):
        TrainingData(cfg, batch_size=6, seed=1, rank=0, world_size=4)


# ----- GPU (NCCL): skipped without CUDA ----------------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
GPU = ["--device", "cuda", "--dtype", "float32"]


@pytest.mark.gpu
@pytest.mark.slow
@needs_gpu
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_gpu_one_rank_ddp_and_fsdp_match_a_plain_run(tmp_path, parallel):
    plain = launch(tmp_path / "plain", 1, *GPU, "--parallel", "none", torchrun=False)
    assert plain.returncode == 0, plain.stderr[-3000:]
    done = launch(tmp_path / parallel, 1, *GPU, "--parallel", parallel)  # NCCL for CUDA tensors, gloo for CPU ones
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("refine", "ntp"):
        assert_same_weights(final_weights(tmp_path / "plain" / method), final_weights(tmp_path / parallel / method), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.slow
@needs_gpu
def test_gpu_bf16_fsdp_with_the_kernel_backend_trains(tmp_path):
    """bf16 autocast, ``backend=auto`` (flash-linear-attention kernels where installed), FSDP on one GPU."""
    done = launch(tmp_path, 1, *GPU, "--parallel", "fsdp", "--precision", "bf16", "--backend", "auto")
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("refine", "ntp"):
        assert all(torch.isfinite(w).all() for w in final_weights(tmp_path / method).values())
        records = read_metrics(tmp_path / method / "metrics.jsonl")
        assert len(records) == 4 and records[-1]["loss"] < records[0]["loss"]
