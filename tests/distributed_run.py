"""A few training steps of a tiny float64 DeltaNet, for tests/test_distributed.py.

Run alone or under torchrun (``python -m torch.distributed.run --standalone --nproc_per_node 2 ...``):

    distributed_run.py OUT [--parallel P] [--methods refine,ntp,post] [--kill-at S] [--device D] [--dtype T] ...

writes OUT/<method> for each method (refine, ntp, post = nested REFINE + answer-SFT) in turn; with
``--kill-at S`` the last rank kills itself (SIGKILL, no clean-up) when it asks for the batch of step S
of the last method.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch

from refine_lm.data import StepBatchSampler
from refine_lm.models.registry import build_model
from refine_lm.optim import OptimConfig
from refine_lm.ranks import world
from refine_lm.refine.ntp import NextTokenObjective
from refine_lm.refine.objective import RefineConfig, RefineObjective
from refine_lm.train.loop import LoopConfig, train
from refine_lm.train.nested import NestedObjective, QABatch

GLOBAL_BATCH, STEPS, LENGTH = 8, 4, 32


def sequences(count: int = 40, period: int = 3, vocab: int = 16) -> torch.Tensor:
    """Sequences repeating a random motif (learnable, and rollouts sometimes match them exactly)."""
    motif = torch.randint(0, vocab, (count, period), generator=torch.Generator().manual_seed(0))
    return motif.repeat(1, LENGTH // period + 1)[:, :LENGTH]


def main(
    out: str,
    parallel: str = "auto",
    methods: str = "refine,ntp,post",
    kill_at: int = -1,
    device: str = "cpu",
    dtype: str = "float64",
    precision: str = "fp32",
    backend: str = "chunk",
) -> None:
    torch.set_num_threads(1)
    rank, size = world()
    pool = sequences()
    sampler = StepBatchSampler(len(pool), GLOBAL_BATCH // size, seed=5, rank=rank, world_size=size)

    def batch_at(step: int) -> torch.Tensor | QABatch:
        if step == kill_at and rank == size - 1 and method == methods.split(",")[-1]:
            os.kill(os.getpid(), signal.SIGKILL)
        rows = torch.as_tensor(sampler.indices(step))
        if method == "post":  # prompts of different lengths, each answered by the 3 tokens that follow it
            cut = [20 + int(i) % 7 for i in rows]
            return QABatch([pool[i, :c] for i, c in zip(rows, cut)], [pool[i, c : c + 3] for i, c in zip(rows, cut)])
        return pool[rows]

    for method in methods.split(","):
        model = build_model("delta_net", "tiny", seed=0).to(getattr(torch, dtype))
        model.set_backend("chunk", chunk_size=8)
        if method == "refine":
            cfg = RefineConfig(num_chunks=2, rollout_len=3, margin=2, mini_batches=2, ppo_epochs=2, reward="hybrid")
            objective = RefineObjective(cfg, micro_batch_size=1)
        elif method == "post":  # nested REFINE, then answer-SFT
            cfg = RefineConfig(num_chunks=2, rollout_len=3, margin=2, mini_batches=2, reward="hybrid")
            objective = NestedObjective("refine", cfg, micro_batch_size=2)
        else:
            objective = NextTokenObjective(micro_batch_size=1, mini_batches=2)
        loop = LoopConfig(
            steps=STEPS,
            batch_size=GLOBAL_BATCH,
            save_every=2,
            parallel=parallel,
            seed=3,
            device=device,
            precision=precision,
            backend=backend,
        )
        train(loop, OptimConfig(lr=1e-2, schedule="cosine", warmup_steps=1), model, objective, batch_at, f"{out}/{method}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    for name, default in [("parallel", "auto"), ("methods", "refine,ntp,post"), ("device", "cpu"), ("dtype", "float64"),
                          ("precision", "fp32"), ("backend", "chunk")]:  # fmt: skip
        parser.add_argument(f"--{name}", default=default)
    parser.add_argument("--kill-at", type=int, default=-1)
    main(**vars(parser.parse_args()))
