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

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..config import ConfigError
from ..ops.dtypes import Precision, resolve_precision
from ..ops.dtypes import autocast as autocast_for
from . import distributed
from .checkpoint import list_checkpoints, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from .metrics import MetricsLog
from .optim import OptimConfig, build_optimizer, build_scheduler


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
    resume: continue from the newest checkpoint in the output directory if there is one.
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

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of micro_batch_size {self.micro_batch_size}")

    @property
    def micro(self) -> int:
        return self.micro_batch_size or self.batch_size


class StepRandom:
    """The random draws of one training step: one stream per sequence of the step's global batch.

    The stream of sequence ``i`` is seeded with ``(seed, step, i)`` and draws on the CPU: a sequence's
    draws (rollout positions, sampled tokens, mini-batch placement) are the same whichever data-parallel
    rank holds it, however its rank splits the batch, on any device, and after a resume. ``offset`` is the
    global index of this rank's first sequence.
    """

    def __init__(self, seed: int, step: int, offset: int = 0):
        self.seed, self.step, self.offset = seed, step, offset
        self._streams: list[torch.Generator] = []

    def _stream(self, row: int) -> torch.Generator:
        while len(self._streams) <= row:
            index = self.offset + len(self._streams)
            seed = np.random.SeedSequence([self.seed % 2**64, self.step, index]).generate_state(1, np.uint64)[0]
            self._streams.append(torch.Generator().manual_seed(int(seed)))
        return self._streams[row]

    def view(self, start: int, count: int) -> StepRandom:
        """The streams of rows ``start .. start + count - 1`` as rows ``0 .. count - 1`` (the same streams:
        draws from the view advance them), e.g. to work on one sequence at a time."""
        view = StepRandom(self.seed, self.step, self.offset + start)
        view._streams = [self._stream(start + j) for j in range(count)]
        return view

    def uniform(self, rows: int, *shape: int, device: str | torch.device | None = None) -> Tensor:
        """float64 ``[rows, *shape]`` uniform in [0, 1); row i is the next draws of stream ``offset + i``."""
        draws = [torch.rand(shape, generator=self._stream(i), dtype=torch.float64) for i in range(rows)]
        return torch.stack(draws).to(device) if draws else torch.empty(0, *shape, dtype=torch.float64, device=device)


def mini_batch_rows(num_rows: int, mini_batches: int, keys: Tensor | None = None) -> list[Tensor]:
    """Split ``num_rows`` rows into ``mini_batches`` equal mini-batches of row indices.

    Each run of ``mini_batches`` consecutive rows gives one row to every mini-batch: without ``keys`` row i
    goes to mini-batch ``i % mini_batches``; with ``keys [num_rows]`` (e.g. uniform draws) the row with the
    j-th smallest key of its run goes to mini-batch j. A rank's rows are a whole number of runs (its share
    of the batch is a multiple of ``mini_batches``), so the global mini-batches are the same for any number
    of ranks.
    """
    if num_rows % mini_batches:
        raise ValueError(f"batch of {num_rows} sequences (per rank) does not split into {mini_batches} mini-batches")
    slot = torch.arange(num_rows) % mini_batches
    if keys is not None:
        slot = keys.reshape(-1, mini_batches).argsort(-1).argsort(-1).reshape(-1).cpu()
    return [torch.nonzero(slot == m)[:, 0] for m in range(mini_batches)]


class Objective(Protocol):
    """What a trainer optimises.

    Losses are sums over tokens divided by a count: divide by ``distributed.mean_over_ranks(count of this
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
    output_dir = Path(output_dir)
    parallel = distributed.setup(loop.parallel, loop.device, loop.dist_timeout_minutes)
    main = parallel.is_main
    if loop.batch_size % parallel.world_size:
        raise ConfigError(f"loop.batch_size {loop.batch_size} (the global batch) does not split over {parallel.world_size} ranks")
    if main:
        output_dir.mkdir(parents=True, exist_ok=True)
    device = parallel.device
    if loop.threads:
        torch.set_num_threads(loop.threads)
    if hasattr(model, "set_backend") and loop.backend != "chunk":
        model.set_backend(loop.backend)
    model.to(device).train()

    start_step, bad_in_a_row = 0, 0
    checkpoints = list_checkpoints(output_dir)
    if checkpoints and not loop.resume:
        raise TrainingError(
            f"{output_dir} already holds checkpoints of an earlier run: use resume=true or another output directory"
        )
    state = None
    if checkpoints:  # every rank reads the checkpoint before the weights are wrapped or sharded
        state = load_trainer_state(checkpoints[-1])
        load_weights(model, checkpoints[-1])
    trained = parallel.wrap(model)  # what the objective calls: DDP wrapper, or the model (FSDP: sharded in place)
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim, loop.steps * objective.updates_per_step)
    if state is not None:
        parallel.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_step, bad_in_a_row = state["step"], state.get("bad_in_a_row", 0)
        if main:
            print(f"resuming from {checkpoints[-1]} (step {start_step}, written by {state.get('world_size', 1)} rank(s))")
    log = MetricsLog(output_dir / "metrics.jsonl", resume_step=start_step if checkpoints else None) if main else None

    def write(record: dict[str, Any]) -> None:
        if log is not None:
            log.write(record)

    def close_log() -> None:
        if log is not None:
            log.close()

    def checkpoint(step: int) -> None:
        weights = parallel.full_state_dict(model)  # FSDP: gathered onto rank 0 (every rank takes part)
        trainer_state = {
            "step": step,
            "optimizer": parallel.optimizer_state(model, optimizer),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "bad_in_a_row": bad_in_a_row,
            "world_size": parallel.world_size,
            "config": run_config or {},
        }
        if main:
            save_checkpoint(
                output_dir, step, model, trainer_state, tokenizer=tokenizer, keep_last=loop.keep_last, state_dict=weights
            )
        distributed.barrier()

    def run_validation(step: int) -> dict[str, float]:
        result: dict[str, float] = {}
        if validate is not None and (main or parallel.kind == "fsdp"):
            model.eval()
            with torch.no_grad(), autocast(), parallel.full_parameters(model):
                result = validate(model)
            model.train()
        if result:
            write({"step": step, "split": "validation", **result})
        distributed.barrier()
        return result

    precision = resolve_precision(loop.precision, device)
    autocast = lambda: autocast_for(precision, device)

    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = optim.grad_clip if optim.grad_clip > 0 else math.inf
    rows = loop.batch_size // parallel.world_size
    last: dict[str, float] = {}
    progress = tqdm(
        range(start_step, loop.steps), initial=start_step, total=loop.steps, desc="train", dynamic_ncols=True, disable=not main
    )
    for step in progress:
        started = time.perf_counter()
        compute_before = getattr(model, "compute_tokens", 0)
        batch = batch_at(step).to(device)
        if len(batch) != rows:
            raise TrainingError(
                f"batch_at({step}) gave {len(batch)} sequences; each of {parallel.world_size} rank(s) needs "
                f"loop.batch_size / ranks = {rows}"
            )
        rng = StepRandom(loop.seed, step, offset=parallel.rank * rows)
        update_metrics, skipped = [], 0
        with autocast():
            with parallel.full_parameters(model):  # the objective's no-gradient phase (rollouts)
                updates = list(objective.updates(trained, batch, rng))
            for micro_batches in updates:
                optimizer.zero_grad(set_to_none=True)
                records, loss_sum = [], 0.0
                for i, micro in enumerate(micro_batches):
                    with parallel.accumulating(trained, sync=i == len(micro_batches) - 1):
                        loss, metrics = objective.loss(trained, micro)
                        loss.backward()
                    loss_sum += float(loss.detach())
                    records.append(metrics)
                loss_sum = distributed.mean_over_ranks(loss_sum)  # the global loss: every rank decides alike
                grad_norm = parallel.gradient_norm(params, max_norm)
                if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
                    skipped += 1
                    bad_in_a_row += 1
                    optimizer.zero_grad(set_to_none=True)
                    write({"step": step + 1, "event": "skipped_update", "loss": loss_sum, "grad_norm": grad_norm})
                    if bad_in_a_row >= loop.max_bad_steps:
                        close_log()
                        raise TrainingError(
                            f"{bad_in_a_row} non-finite updates in a row (last at step {step + 1}: loss {loss_sum}, "
                            f"grad norm {grad_norm}); lower the learning rate or check the data"
                        )
                    continue
                bad_in_a_row = 0
                optimizer.step()
                scheduler.step()
                update_metrics.append({**_average(records), "loss": loss_sum, "grad_norm": grad_norm})
        done = step + 1
        local = {
            **_average(update_metrics),
            "step_seconds": time.perf_counter() - started,
            "compute_tokens": getattr(model, "compute_tokens", 0) - compute_before,
        }
        if hasattr(objective, "step_metrics"):  # e.g. rewards of the step's rollouts
            local.update(objective.step_metrics())
        last = distributed.reduce_metrics(local, sums=("compute_tokens",), maxima=("step_seconds",))
        last.update(
            lr=scheduler.get_last_lr()[0],
            tokens_per_s=batch.numel() * parallel.world_size / last["step_seconds"],
            skipped_updates=skipped,
        )
        if done % loop.log_every == 0 or done == loop.steps:
            write({"step": done, "split": "train", **last})
        progress.set_postfix({k: f"{last[k]:.4g}" for k in ("loss", "grad_norm", "tokens_per_s") if k in last})
        if loop.eval_every and done % loop.eval_every == 0 and done != loop.steps:
            run_validation(done)
        if loop.save_every and done % loop.save_every == 0 and done != loop.steps:
            checkpoint(done)
    if start_step >= loop.steps:
        close_log()
        if main:
            print(f"{output_dir} already holds all {loop.steps} steps")
        return {}
    result = run_validation(loop.steps)
    checkpoint(loop.steps)
    close_log()
    return result or last
