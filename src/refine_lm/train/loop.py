"""The training loop every trainer shares: steps, accumulation, clipping, NaN guard, logging,
validation, checkpoints and exact resume.

A trainer contributes an :class:`Objective`: given a step's batch it yields the optimiser updates
to make (each a list of micro-batches whose losses are summed by accumulation) and computes the
loss of a micro-batch. Next-token prediction makes one update per batch; REFINE first samples
rollouts (no gradients) and may make several (PPO mini-batches and epochs).

Every random draw of step ``s`` comes from a generator seeded with ``(seed, s)`` and the data of
step ``s`` is a function of ``s``, so a run resumed from a checkpoint computes exactly what the
uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
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

from .checkpoint import list_checkpoints, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from .metrics import MetricsLog
from .optim import OptimConfig, build_optimizer, build_scheduler


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. too many non-finite steps in a row)."""


@dataclass
class LoopConfig:
    """The outer training loop.

    steps: training steps (batches) in the whole run.
    batch_size: sequences per step.
    micro_batch_size: sequences per forward/backward; gradients accumulate up to batch_size (0 = no accumulation).
    precision: ``fp32``, or ``bf16`` autocast for projections and MLPs (recurrences stay fp32).
    device: ``cpu`` or ``cuda``.
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
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = "cpu"
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


class Objective(Protocol):
    """What a trainer optimises."""

    updates_per_step: int  # optimiser updates per batch (for the learning-rate schedule)

    def updates(self, model: nn.Module, batch: Tensor, generator: torch.Generator) -> Iterator[list[Any]]:
        """Yield, for each optimiser update, the micro-batches whose summed losses make it."""
        ...

    def loss(self, model: nn.Module, micro: Any) -> tuple[Tensor, dict[str, Any]]:
        """The micro-batch's share of its update's loss (the update's loss is their sum), and metrics:
        numbers, or ``(value, weight)`` pairs for weighted averages over micro-batches."""
        ...


def step_generator(seed: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The random generator of one training step: a function of (seed, step) only."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step)


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
    """Run (or resume) ``loop.steps`` steps; returns the last validation metrics (or the last step's)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(loop.device)
    if loop.threads:
        torch.set_num_threads(loop.threads)
    model.to(device).train()
    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim, loop.steps * objective.updates_per_step)

    start_step, bad_in_a_row = 0, 0
    checkpoints = list_checkpoints(output_dir)
    if checkpoints and not loop.resume:
        raise TrainingError(
            f"{output_dir} already holds checkpoints of an earlier run: use resume=true or another output directory"
        )
    if checkpoints:
        state = load_trainer_state(checkpoints[-1])
        load_weights(model, checkpoints[-1])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_step, bad_in_a_row = state["step"], state.get("bad_in_a_row", 0)
        print(f"resuming from {checkpoints[-1]} (step {start_step})")
    log = MetricsLog(output_dir / "metrics.jsonl", resume_step=start_step if checkpoints else None)

    def checkpoint(step: int) -> None:
        trainer_state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
            "bad_in_a_row": bad_in_a_row,
            "config": run_config or {},
        }
        save_checkpoint(output_dir, step, model, trainer_state, tokenizer=tokenizer, keep_last=loop.keep_last)

    def run_validation(step: int) -> dict[str, float]:
        model.eval()
        with torch.no_grad(), autocast():
            result = validate(model) if validate else {}
        model.train()
        if result:
            log.write({"step": step, "split": "validation", **result})
        return result

    def autocast():
        if loop.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    params = [p for p in model.parameters() if p.requires_grad]
    last: dict[str, float] = {}
    progress = tqdm(range(start_step, loop.steps), initial=start_step, total=loop.steps, desc="train", dynamic_ncols=True)
    for step in progress:
        started = time.perf_counter()
        compute_before = getattr(model, "compute_tokens", 0)
        batch = batch_at(step).to(device)
        generator = step_generator(loop.seed, step, device)
        update_metrics, skipped = [], 0
        with autocast():
            for micro_batches in objective.updates(model, batch, generator):
                optimizer.zero_grad(set_to_none=True)
                records, loss_sum = [], 0.0
                for micro in micro_batches:
                    loss, metrics = objective.loss(model, micro)
                    loss.backward()
                    loss_sum += float(loss.detach())
                    records.append(metrics)
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, optim.grad_clip if optim.grad_clip > 0 else math.inf))
                if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
                    skipped += 1
                    bad_in_a_row += 1
                    optimizer.zero_grad(set_to_none=True)
                    log.write({"step": step + 1, "event": "skipped_update", "loss": loss_sum, "grad_norm": grad_norm})
                    if bad_in_a_row >= loop.max_bad_steps:
                        log.close()
                        raise TrainingError(
                            f"{bad_in_a_row} non-finite updates in a row (last at step {step + 1}: loss {loss_sum}, "
                            f"grad norm {grad_norm}); lower the learning rate or check the data"
                        )
                    continue
                bad_in_a_row = 0
                optimizer.step()
                scheduler.step()
                update_metrics.append({**_average(records), "loss": loss_sum, "grad_norm": grad_norm})
        seconds = time.perf_counter() - started
        done = step + 1
        last = {
            **_average(update_metrics),
            "lr": scheduler.get_last_lr()[0],
            "step_seconds": seconds,
            "tokens_per_s": batch.numel() / seconds,
            "skipped_updates": skipped,
            "compute_tokens": getattr(model, "compute_tokens", 0) - compute_before,
        }
        if hasattr(objective, "step_metrics"):  # e.g. rewards of the step's rollouts
            last.update(objective.step_metrics())
        if done % loop.log_every == 0 or done == loop.steps:
            log.write({"step": done, "split": "train", **last})
        progress.set_postfix({k: f"{last[k]:.4g}" for k in ("loss", "grad_norm", "tokens_per_s") if k in last})
        if loop.eval_every and done % loop.eval_every == 0 and done != loop.steps:
            run_validation(done)
        if loop.save_every and done % loop.save_every == 0 and done != loop.steps:
            checkpoint(done)
    if start_step >= loop.steps:
        log.close()
        print(f"{output_dir} already holds all {loop.steps} steps")
        return {}
    result = run_validation(loop.steps)
    checkpoint(loop.steps)
    log.close()
    return result or last
