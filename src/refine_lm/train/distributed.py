"""Data-parallel training: ``torchrun --nproc_per_node N -m refine_lm train|pretrain ...``.

The shared loop (``loop.py``) composes what is here; trainers and objectives stay single-process code.

- **Launch.** torchrun starts N copies of the command and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
  rendezvous address; :func:`setup` joins them (gloo for CPU tensors, NCCL for CUDA tensors) and places each rank
  on its device (``cuda`` -> ``cuda:LOCAL_RANK``). Without torchrun nothing changes.
- **Data.** ``loop.batch_size`` is the *global* batch. Rank r holds rows ``[r B, (r + 1) B)`` of it
  (``B = batch_size / world_size``, split further into micro-batches): ``TrainingData`` asks :func:`world` for
  its shard. Every random draw belongs to one sequence of the global batch (``step_random.StepRandom``), so a
  sequence's rollouts do not depend on the rank that holds it, and mini-batches are cut the same way whatever
  the number of ranks (``step_random.mini_batch_rows``): N ranks compute what one process computes.
- **Gradients** are averaged over ranks: DDP all-reduces them (the last micro-batch of an update synchronises,
  the others accumulate under ``no_sync``), FSDP2 (``fully_shard`` per block and on the root) reduce-scatters
  them. An objective divides its loss sums by :func:`mean_over_ranks` of its token count, which makes that
  average the token-mean over the global batch even when ranks hold different numbers of tokens.
- **IO.** Rank 0 alone logs and writes checkpoints. Checkpoints are plain Hugging Face directories: FSDP
  gathers the full state dict onto rank 0 to write them (no merge step), and the optimiser state is stored in
  the single-process format, so a run resumes with any number of ranks and either strategy.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import ConfigError
from ..ranks import world

Parallel = Literal["auto", "none", "ddp", "fsdp"]


class _DataParallel(DistributedDataParallel):
    """DDP whose unknown attributes are the model's (``lm_head``, ``generate``, ``config`` ...), so objectives
    written for a plain model run unchanged; forward calls go through DDP (gradient synchronisation)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":
                raise
            return getattr(self.module, name)


@dataclass
class Distributed:
    """This process's part of a run: the strategy, its rank and device (see the module docstring).

    kind: ``none``, ``ddp`` or ``fsdp``.
    """

    kind: Literal["none", "ddp", "fsdp"]
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ----- the model ----------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """What the objective trains: a DDP wrapper (``ddp``), the model sharded in place (``fsdp``), or the
        model itself. Load weights before (every rank reads the same checkpoint)."""
        if self.kind == "ddp":
            return _DataParallel(model)
        if self.kind == "fsdp":
            _shard(model, self.device.type, self.world_size)
        return model

    def accumulating(self, trained: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward and backward: DDP synchronises gradients only when ``sync`` (the
        last micro-batch of an update). FSDP reduce-scatters after every micro-batch, keeping only its
        gradient shard: what it is for is memory."""
        if self.kind == "ddp" and not sync:
            return trained.no_sync()
        return contextlib.nullcontext()

    def full_parameters(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """FSDP: every rank holds the full parameters inside, for work outside ``forward`` (sampling with
        ``generate``/``step``, validation). Other strategies: nothing to do."""
        return _unsharded(model) if self.kind == "fsdp" else contextlib.nullcontext()

    def gradient_norm(self, params: list[nn.Parameter], max_norm: float) -> float:
        """Clip the global gradient norm (all ranks agree on it) and return it."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP: a DTensor
            norm = norm.full_tensor()
        return float(norm)

    # ----- checkpoints ------------------------------------------------------------------------------
    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """FSDP: the full weights, gathered on rank 0 (every rank must call it). Others: None (the model has them)."""
        if self.kind != "fsdp":
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimiser state in the single-process format (every rank must call it; complete on rank 0)."""
        if self.kind != "fsdp":
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        full = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not full:  # ranks other than 0 receive nothing
            return {}
        names = _parameter_names(model, optimizer)
        number = {name: i for i, name in enumerate(names)}
        return {
            "state": {number[name]: value for name, value in full["state"].items()},
            "param_groups": [{**g, "params": [number[name] for name in g["params"]]} for g in full["param_groups"]],
        }

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a state written by :meth:`optimizer_state`, whatever strategy and number of ranks wrote it."""
        if self.kind != "fsdp":
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        names = _parameter_names(model, optimizer)
        full = {
            "state": {names[i]: value for i, value in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
        }
        set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(full_state_dict=True))


def setup(parallel: Parallel, device: str, timeout_minutes: float = 60) -> Distributed:
    """Join torchrun's processes (if any) for ``parallel`` and return this rank's :class:`Distributed`.

    ``auto`` is ``ddp`` under torchrun with more than one process, else ``none``. ``ddp`` and ``fsdp`` also run
    in a single process (a process group of one), e.g. FSDP on one GPU. ``timeout_minutes``: how long a
    collective waits (ranks wait for rank 0 while it validates and writes checkpoints). The process group
    lives until the process exits (later runs in the same process reuse it).
    """
    rank, size = world()
    kind = ("ddp" if size > 1 else "none") if parallel == "auto" else parallel
    if kind not in ("none", "ddp", "fsdp"):
        raise ConfigError(f"loop.parallel must be auto, none, ddp or fsdp, got {parallel!r}")
    if kind == "none" and size > 1:
        raise ConfigError(f"loop.parallel=none, but torchrun started {size} processes: use ddp or fsdp (or auto)")
    target = torch.device(device)
    if target.type == "cuda":
        if size > 1 and target.index is not None:
            raise ConfigError(f"loop.device={device}: under torchrun use device=cuda (rank r takes cuda:LOCAL_RANK)")
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) if target.index is None else target.index)
        torch.cuda.set_device(target)
    if kind != "none" and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if target.type == "cuda" else "gloo"
        timeout = timedelta(minutes=timeout_minutes)
        if "MASTER_ADDR" in os.environ:  # torchrun (or any env:// launcher)
            dist.init_process_group(backend, timeout=timeout)
        else:  # one process without a launcher
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        atexit.register(dist.destroy_process_group)
    if kind != "none":
        rank, size = dist.get_rank(), dist.get_world_size()
    return Distributed(kind, rank, size, target)


# ----- FSDP2 ------------------------------------------------------------------------------------------


def _blocks(model: nn.Module) -> list[nn.Module]:
    from ..models.base import FastWeightBlock

    return [m for m in model.modules() if isinstance(m, FastWeightBlock)]


def _shard(model: nn.Module, device_type: str, world_size: int) -> None:
    """``fully_shard`` each block, then the root (embeddings, final norm, LM head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # fully_shard replaces the parameters: keep the optimiser's no-weight-decay marks
    no_decay = {name for name, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    # the model returns views (hidden states, memory states); nothing modifies them in place, which is
    # what torch warns about
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mesh = init_device_mesh(device_type, (world_size,))
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for name, p in model.named_parameters():
        if name in no_decay:
            p._no_weight_decay = True


@contextlib.contextmanager
def _unsharded(model: nn.Module) -> Iterator[None]:
    from torch.distributed.fsdp import FSDPModule

    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    inner = [m for m in modules if m is not model]  # the root never reshards after forward anyway
    for m in modules:
        m.unshard()
    for m in inner:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in inner:
            m.set_reshard_after_forward(True, recurse=False)
        for m in modules:
            m.reshard()


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimiser's order (what the single-process state dict numbers them by)."""
    name_of = {p: name for name, p in model.named_parameters()}
    return [name_of[p] for group in optimizer.param_groups for p in group["params"]]
