"""The training loop every trainer shares: steps, accumulation, clipping, NaN guard, logging,
validation, checkpoints and exact resume.

A trainer contributes an :class:`Objective`: given a step's batch it yields the optimiser updates
to make (each a list of micro-batches whose losses are summed by accumulation) and computes the
loss of a micro-batch. Next-token prediction makes one update per batch; REFINE first samples
rollouts (no gradients) and may make several (PPO mini-batches and epochs).

Every random draw of step ``s`` belongs to one sequence of the step's global batch and comes from
that sequence's stream, seeded with ``(seed, s, sequence)`` (:class:`StepRandom`), and the data of
step ``s`` is a function of ``s``: a run resumed from a checkpoint computes exactly what the
uninterrupted run would have, and N data-parallel ranks compute what one process computes
(``distributed.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import ranks
from ..config import ConfigError, changed_settings
from ..ops.dtypes import Precision, resolve_precision
from ..ops.dtypes import autocast as autocast_for
from ..optim import OptimConfig, build_optimizer, build_scheduler
from ..step_random import StepRandom
from . import distributed
from .checkpoint import (
    RunLock,
    list_checkpoints,
    load_trainer_state,
    newest_intact_checkpoint,
    remove_partial_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .metrics import MetricsLog


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. too many non-finite steps in a row)."""


@dataclass
class LoopConfig:
    """The outer training loop.

    steps: training steps (batches) in the whole run.
    batch_size: sequences per step, over all data-parallel ranks (the global batch: each of N ranks
        takes batch_size / N of them).
    micro_batch_size: sequences per forward/backward on one rank; gradients accumulate up to the rank's
        share of the batch (0 = no accumulation).
    precision: ``auto`` (bf16 where the hardware runs it fast: CUDA, or a CPU with AMX / AVX512-BF16; else
        fp32), ``fp32``, or ``bf16`` autocast for projections and MLPs (recurrences stay fp32).
    device: ``cpu`` or ``cuda`` (under torchrun, rank r uses ``cuda:LOCAL_RANK``).
    backend: how the model reads sequences: ``chunk`` (torch), ``fla`` (flash-linear-attention kernels,
        CUDA), ``auto`` (fla where installed and on CUDA, else chunk), ``naive``.
    parallel: ``auto`` (``ddp`` when torchrun starts several processes, else ``none``), ``none``, ``ddp``
        or ``fsdp`` (FSDP2: parameters, gradients and optimiser state sharded over the ranks).
    dist_timeout_minutes: how long ranks wait in a collective (e.g. for rank 0 validating).
    threads: CPU threads for torch (0: its default). On a CPU shared with other jobs, fewer threads than
        cores avoids the large slow-downs of oversubscribed OpenMP threads.
    seed: seeds initialisation, data order and every random draw.
    log_every: write a metrics record every this many steps.
    eval_every: validate every this many steps (0 = only at the end).
    save_every: checkpoint every this many steps (0 = only at the end).
    keep_last: checkpoints kept on disk (older ones are deleted).
    max_bad_steps: stop with an error after this many consecutive non-finite updates (each is skipped).
    resume: continue from the newest intact checkpoint in the output directory if there is one.
    resume_with_changes: resume even when settings other than those that only extend or watch the run
        (``RESUMABLE_CHANGES``: steps, logging, validation and checkpoint intervals, threads, devices, ranks)
        differ from the checkpoint's; without it such a resume is refused with the list of changed keys.
    """

    steps: int = 100
    batch_size: int = 8
    micro_batch_size: int = 0
    precision: Precision = "auto"
    device: str = "cpu"
    backend: Literal["chunk", "fla", "auto", "naive"] = "chunk"
    parallel: distributed.Parallel = "auto"
    dist_timeout_minutes: float = 60.0
    threads: int = 0
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0
    save_every: int = 0
    keep_last: int = 2
    max_bad_steps: int = 3
    resume: bool = True
    resume_with_changes: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size


# settings a resumed run may change: they extend the run, or change how it is watched or where it runs
RESUMABLE_CHANGES = (
    "loop.steps", "loop.log_every", "loop.eval_every", "loop.save_every", "loop.keep_last", "loop.threads",
    "loop.resume", "loop.resume_with_changes", "loop.max_bad_steps", "loop.device", "loop.parallel",
    "loop.dist_timeout_minutes", "output_dir", "export_to",
)  # fmt: skip


class Objective(Protocol):
    """What a trainer optimises.

    Losses are sums over tokens divided by a count: divide by ``ranks.mean_over_ranks(count of this
    rank's share of the update)`` so that averaging gradients over data-parallel ranks gives the token-mean
    over the global batch. Draw random numbers from ``rng`` only (per sequence), and split batches into
    mini-batches with :func:`mini_batch_rows`: then N ranks compute what one process computes.
    """

    updates_per_step: int  # optimiser updates per batch (for the learning-rate schedule)

    def updates(self, model: nn.Module, batch: Tensor, rng: StepRandom) -> Iterator[list[Any]]:
        """Yield, for each optimiser update, the micro-batches whose summed losses make it (they are listed
        before the first update is made: no-gradient work such as sampling happens here)."""
        ...

    def loss(self, model: nn.Module, micro: Any) -> tuple[Tensor, dict[str, Any]]:
        """The micro-batch's share of its update's loss (the update's loss is their sum), and metrics:
        numbers, or ``(value, weight)`` pairs for weighted averages over micro-batches."""
        ...


def load_weights(model: nn.Module, checkpoint: Path) -> None:
    state = load_file(checkpoint / "model.safetensors", device=str(next(model.parameters()).device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise TrainingError(f"{checkpoint}: weights do not fit the model (missing {missing}, unexpected {unexpected})")


def _average(records: list[dict[str, Any]]) -> dict[str, float]:
    """Weighted means of metric records whose values are numbers (weight 1) or ``(value, weight)``."""
    total: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        for key, value in record.items():
            value, weight = value if isinstance(value, tuple) else (value, 1.0)
            total[key] = total.get(key, 0.0) + float(weight) * float(value)
            weights[key] = weights.get(key, 0.0) + float(weight)
    return {k: total[k] / max(weights[k], 1e-12) for k in total}


class _Run:
    """One run of the loop, in named steps: set up and resume, train a step, validate, checkpoint, close."""

    def __init__(
        self, loop: LoopConfig, optim: OptimConfig, model: nn.Module, objective: Objective, output_dir: Path, run_config
    ):
        self.loop, self.model, self.objective, self.output_dir = loop, model, objective, output_dir
        self.parallel = distributed.setup(loop.parallel, loop.device, loop.dist_timeout_minutes)
        self.main = self.parallel.is_main
        if loop.batch_size % self.parallel.world_size:
            raise ConfigError(
                f"loop.batch_size {loop.batch_size} (the global batch) does not split over {self.parallel.world_size} ranks"
            )
        if output_dir.exists() and not output_dir.is_dir():
            raise ConfigError(f"output directory {output_dir} is a file")
        self.lock, self.log = RunLock(output_dir), None
        if self.main:
            self.lock.acquire()  # before anything is read or written there
            remove_partial_checkpoints(output_dir)
        try:
            self._start(optim, run_config)
        except BaseException:
            self.lock.release()
            raise

    def _start(self, optim: OptimConfig, run_config: dict[str, Any] | None) -> None:
        loop, model, objective, output_dir = self.loop, self.model, self.objective, self.output_dir
        self.device = self.parallel.device
        if loop.threads:
            torch.set_num_threads(loop.threads)
        if hasattr(model, "set_backend") and loop.backend != "chunk":
            model.set_backend(loop.backend)
        model.to(self.device).train()
        self.precision = resolve_precision(loop.precision, self.device)
        self.rows = loop.batch_size // self.parallel.world_size  # this rank's share of a step's batch
        self.step, self.bad_in_a_row = 0, 0
        checkpoints = list_checkpoints(output_dir)
        if checkpoints and not loop.resume:
            raise TrainingError(
                f"{output_dir} already holds checkpoints of an earlier run: use resume=true or another output directory"
            )
        state, newest = None, newest_intact_checkpoint(output_dir) if checkpoints else None
        if checkpoints and newest is None:
            raise TrainingError(f"{output_dir}: no checkpoint there is intact (see the warnings); move them away to start over")
        if newest is not None:  # every rank reads the checkpoint before the weights are wrapped or sharded
            state = load_trainer_state(newest)
            saved = state.get("config")
            changed = changed_settings(saved, run_config or {}, RESUMABLE_CHANGES) if saved else []
            if changed and not loop.resume_with_changes:
                raise TrainingError(
                    f"{newest} was written with other settings ({'; '.join(changed)}): use another output directory, "
                    "or loop.resume_with_changes=true to resume with the new ones"
                )
            load_weights(model, newest)
        self.trained = self.parallel.wrap(model)  # what the objective calls: DDP wrapper, or the model (FSDP: sharded)
        self.optimizer = build_optimizer(model, optim)
        self.scheduler = build_scheduler(self.optimizer, optim, loop.steps * objective.updates_per_step)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.max_norm = optim.grad_clip if optim.grad_clip > 0 else math.inf
        if state is not None:
            self.parallel.load_optimizer_state(model, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            self.step, self.bad_in_a_row = state["step"], state.get("bad_in_a_row", 0)
            if self.main:
                print(f"resuming from {newest} (step {self.step}, written by {state.get('world_size', 1)} rank(s))")
        resume_step = self.step if checkpoints else None
        self.log = MetricsLog(output_dir / "metrics.jsonl", resume_step=resume_step) if self.main else None

    def autocast(self):
        return autocast_for(self.precision, self.device)

    def write(self, record: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(record)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        self.lock.release()

    def train_step(self, step: int, batch: Tensor) -> dict[str, float]:
        """The objective's updates for one batch; the step's metrics, averaged over updates and ranks."""
        started = time.perf_counter()
        compute_before = getattr(self.model, "compute_tokens", 0)
        batch = batch.to(self.device)
        if len(batch) != self.rows:
            raise TrainingError(
                f"batch_at({step}) gave {len(batch)} sequences; each of {self.parallel.world_size} rank(s) needs "
                f"loop.batch_size / ranks = {self.rows}"
            )
        rng = StepRandom(self.loop.seed, step, offset=self.parallel.rank * self.rows)
        records = []
        with self.autocast():
            with self.parallel.full_parameters(self.model):  # the objective's no-gradient phase (rollouts)
                updates = list(self.objective.updates(self.trained, batch, rng))
            for micro_batches in updates:
                record = self.update(step, micro_batches)
                if record is not None:
                    records.append(record)
        local = {
            **_average(records),
            "step_seconds": time.perf_counter() - started,
            "compute_tokens": getattr(self.model, "compute_tokens", 0) - compute_before,
        }
        if hasattr(self.objective, "step_metrics"):  # e.g. rewards of the step's rollouts
            local.update(self.objective.step_metrics())
        metrics = ranks.reduce_metrics(local, sums=("compute_tokens",), maxima=("step_seconds",))
        metrics.update(
            lr=self.scheduler.get_last_lr()[0],
            tokens_per_s=batch.numel() * self.parallel.world_size / metrics["step_seconds"],
            skipped_updates=len(updates) - len(records),
        )
        self.step = step + 1
        return metrics

    def update(self, step: int, micro_batches: list[Any]) -> dict[str, float] | None:
        """One optimiser update from summed micro-batch losses; None when it was skipped as non-finite."""
        self.optimizer.zero_grad(set_to_none=True)
        records, loss_sum = [], 0.0
        for i, micro in enumerate(micro_batches):
            with self.parallel.accumulating(self.trained, sync=i == len(micro_batches) - 1):
                loss, metrics = self.objective.loss(self.trained, micro)
                loss.backward()
            loss_sum += float(loss.detach())
            records.append(metrics)
        loss_sum = ranks.mean_over_ranks(loss_sum)  # the global loss: every rank decides alike
        grad_norm = self.parallel.gradient_norm(self.params, self.max_norm)
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
            self.bad_in_a_row += 1
            self.optimizer.zero_grad(set_to_none=True)
            self.write({"step": step + 1, "event": "skipped_update", "loss": loss_sum, "grad_norm": grad_norm})
            if self.bad_in_a_row >= self.loop.max_bad_steps:
                raise TrainingError(
                    f"{self.bad_in_a_row} non-finite updates in a row (last at step {step + 1}: loss {loss_sum}, "
                    f"grad norm {grad_norm}); lower the learning rate or check the data"
                )
            return None
        self.bad_in_a_row = 0
        self.optimizer.step()
        self.scheduler.step()
        return {**_average(records), "loss": loss_sum, "grad_norm": grad_norm}

    def validate(self, validate: Callable[[nn.Module], dict[str, float]] | None) -> dict[str, float]:
        result: dict[str, float] = {}
        if validate is not None and (self.main or self.parallel.kind == "fsdp"):
            self.model.eval()
            with torch.no_grad(), self.autocast(), self.parallel.full_parameters(self.model):
                result = validate(self.model)
            self.model.train()
        if result:
            self.write({"step": self.step, "split": "validation", **result})
        ranks.barrier()
        return result

    def checkpoint(self, tokenizer, run_config: dict[str, Any] | None) -> None:
        weights = self.parallel.full_state_dict(self.model)  # FSDP: gathered onto rank 0 (every rank takes part)
        trainer_state = {
            "step": self.step,
            "optimizer": self.parallel.optimizer_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "bad_in_a_row": self.bad_in_a_row,
            "world_size": self.parallel.world_size,
            "config": run_config or {},
        }
        if self.main:
            save_checkpoint(
                self.output_dir,
                self.step,
                self.model,
                trainer_state,
                tokenizer=tokenizer,
                keep_last=self.loop.keep_last,
                state_dict=weights,
            )
        ranks.barrier()


def train(
    loop: LoopConfig,
    optim: OptimConfig,
    model: nn.Module,
    objective: Objective,
    batch_at: Callable[[int], Tensor],
    output_dir: str | Path,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    tokenizer=None,
    run_config: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Run (or resume) ``loop.steps`` steps; returns the last validation metrics (or the last step's).

    ``batch_at(step)`` gives this rank's rows of the step's global batch (rank r: rows ``[r B, (r + 1) B)``
    of ``loop.batch_size``, as ``TrainingData.batch_at`` does). Under torchrun the ranks train one model
    data-parallel (see ``distributed.py``); rank 0 alone logs, validates and writes checkpoints (FSDP:
    every rank validates, with the full parameters).
    """
    run = _Run(loop, optim, model, objective, Path(output_dir), run_config)
    try:
        if run.step >= loop.steps:
            if run.main:
                print(f"{output_dir} already holds all {loop.steps} steps")
            return {}
        last: dict[str, float] = {}
        progress = tqdm(
            range(run.step, loop.steps),
            initial=run.step,
            total=loop.steps,
            desc="train",
            dynamic_ncols=True,
            disable=not run.main,
        )
        for step in progress:
            last = run.train_step(step, batch_at(step))
            done = run.step
            if done % loop.log_every == 0 or done == loop.steps:
                run.write({"step": done, "split": "train", **last})
            progress.set_postfix({k: f"{last[k]:.4g}" for k in ("loss", "grad_norm", "tokens_per_s") if k in last})
            if loop.eval_every and done % loop.eval_every == 0 and done != loop.steps:
                run.validate(validate)
            if loop.save_every and done % loop.save_every == 0 and done != loop.steps:
                run.checkpoint(tokenizer, run_config)
        result = run.validate(validate)
        run.checkpoint(tokenizer, run_config)
        return result or last
    finally:
        run.close()
