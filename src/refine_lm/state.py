"""Recurrent memory states: the contract between the models and everything that drives them.

A fast-weight layer's memory is a handful of tensors (a delta-rule matrix, a short-conv buffer,
the weights of a small MLP, a sliding KV cache...). Every field of a state is a tensor whose
first dimension is the batch, so one generic set of operations serves all architectures:
clone / detach (snapshot a prefix), ``index`` / ``repeat_interleave`` (fan one prefix out to
many rollouts), ``cat`` (gather rollouts of several sequences into one batch) and ``to``
(device / dtype moves; the recurrent matrices stay in fp32 unless asked otherwise).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor

S = TypeVar("S", bound="TensorState")


def _apply(fn: Callable[[Tensor], Tensor], value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, TensorState):
        return value.map(fn)
    if isinstance(value, (list, tuple)):
        return type(value)(_apply(fn, v) for v in value)
    raise TypeError(f"state fields must be tensors, states, lists of them or None, got {type(value).__name__}")


def _cat(values: Sequence[Any]) -> Any:
    first = values[0]
    if first is None:
        if any(v is not None for v in values):
            raise ValueError("cannot concatenate states where a field is None in some and set in others")
        return None
    if isinstance(first, Tensor):
        return torch.cat(list(values), dim=0)
    if isinstance(first, TensorState):
        return type(first).cat(values)
    if isinstance(first, (list, tuple)):
        if any(len(v) != len(first) for v in values):
            raise ValueError("cannot concatenate states with different numbers of layers")
        return type(first)(_cat([v[i] for v in values]) for i in range(len(first)))
    raise TypeError(f"cannot concatenate state field of type {type(first).__name__}")


def _first_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, TensorState):
        for f in dataclasses.fields(value):
            found = _first_tensor(getattr(value, f.name))
            if found is not None:
                return found
    if isinstance(value, (list, tuple)):
        for v in value:
            found = _first_tensor(v)
            if found is not None:
                return found
    return None


class TensorState:
    """Base class for states. Subclasses are dataclasses whose tensor fields are batch-first."""

    def map(self: S, fn: Callable[[Tensor], Tensor]) -> S:
        """A new state with ``fn`` applied to every tensor (recursively)."""
        changes = {f.name: _apply(fn, getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def clone(self: S) -> S:
        return self.map(torch.clone)

    def detach(self: S) -> S:
        return self.map(Tensor.detach)

    def to(self: S, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> S:
        """Move to a device and/or cast floating-point tensors to ``dtype`` (integer tensors keep theirs)."""

        def move(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)

        return self.map(move)

    def index(self: S, idx: Tensor | slice | Sequence[int]) -> S:
        """Select batch rows: ``state.index(torch.tensor([0, 0, 2]))`` duplicates row 0 and keeps row 2."""
        if isinstance(idx, Sequence) and not isinstance(idx, Tensor):
            idx = torch.as_tensor(list(idx), dtype=torch.long)
        return self.map(lambda t: t[idx])

    def repeat_interleave(self: S, repeats: int) -> S:
        """Each row repeated ``repeats`` times in place: rows [a, b] -> [a, a, b, b] for repeats=2."""
        return self.map(lambda t: t.repeat_interleave(repeats, dim=0))

    @classmethod
    def cat(cls: type[S], states: Sequence[S]) -> S:
        """Concatenate states along the batch dimension."""
        if not states:
            raise ValueError("cat() needs at least one state")
        fields = dataclasses.fields(states[0])  # type: ignore[arg-type]
        return dataclasses.replace(states[0], **{f.name: _cat([getattr(s, f.name) for s in states]) for f in fields})  # type: ignore[type-var]

    @property
    def batch_size(self) -> int:
        t = _first_tensor(self)
        if t is None:
            raise ValueError(f"{type(self).__name__} holds no tensors")
        return t.shape[0]

    @property
    def device(self) -> torch.device:
        t = _first_tensor(self)
        if t is None:
            raise ValueError(f"{type(self).__name__} holds no tensors")
        return t.device


@dataclasses.dataclass
class DeltaRuleState(TensorState):
    """Memory of one (Gated) DeltaNet layer.

    recurrent: ``[B, H, d_k, d_v]`` fast-weight matrix S (fp32).
    conv: ``[B, conv_size - 1, D_q + D_k + D_v]`` the last pre-convolution inputs of q, k and v,
        concatenated on the channel axis (``None`` when the layer has no short convolution).
    """

    recurrent: Tensor
    conv: Tensor | None = None


@dataclasses.dataclass
class FastWeightMemory(TensorState):
    """The test-time-trained part of a LaCT layer: H fast-weight heads, each a SwiGLU MLP
    ``f(x) = w1 (SiLU(w0 x) * (w2 x))`` (key size d_k, hidden size d_h, value size d_v), and the chunk
    of C tokens being collected for its next update.

    w0, w2: ``[B, H, d_h, d_k]``; w1: ``[B, H, d_v, d_h]``: the weights after the last completed chunk.
    norm0, norm1, norm2: ``[B, H, rows, 1]`` row norms of the initial weights (updates rescale rows to them).
    momentum0, momentum1, momentum2: momentum buffers shaped like the weights, or None without momentum.
    pending_k, pending_v: ``[B, C - 1, H, d_k / d_v]`` keys and values of the tokens read since the last
        chunk boundary, oldest first, zeros after them; pending_lr ``[B, C - 1, H, 3]`` their learning
        rates for w0, w1, w2; pending_gate ``[B, C - 1, H]`` their momentum gates (None without momentum).
    """

    w0: Tensor
    w1: Tensor
    w2: Tensor
    norm0: Tensor
    norm1: Tensor
    norm2: Tensor
    momentum0: Tensor | None
    momentum1: Tensor | None
    momentum2: Tensor | None
    pending_k: Tensor
    pending_v: Tensor
    pending_lr: Tensor
    pending_gate: Tensor | None


@dataclasses.dataclass
class WindowCache(TensorState):
    """Keys (rotated) and values ``[B, W - 1, heads, head_dim]`` of the W - 1 tokens before the next one,
    oldest first; slots before the start of the sequence hold zeros and are never attended to."""

    keys: Tensor
    values: Tensor


@dataclasses.dataclass
class LaCTState(TensorState):
    """Memory of one LaCT layer: the fast weights with their pending chunk, the sliding-window KV cache,
    and ``position [B]`` (long): tokens read so far. Chunk boundaries sit at multiples of the chunk size
    C from the start of the sequence, so ``position % C`` tokens are pending; rows may sit at different
    positions (and so cross chunk boundaries at different steps). ``conv``: ``[B, conv_size - 1, 3 D]``, the
    last pre-convolution q, k, v inputs of the ``use_short_conv`` variant (None without it)."""

    fast: FastWeightMemory
    window: WindowCache
    position: Tensor
    conv: Tensor | None = None


@dataclasses.dataclass
class ModelState(TensorState):
    """Memory of a whole model: one state per layer."""

    layers: list[TensorState]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> TensorState:
        return self.layers[i]


class StateQuery(NamedTuple):
    """A request for mid-sequence states: "the state after reading the first ``lengths[i]`` tokens
    of batch row ``rows[i]``" (both ``[M]`` long tensors, lengths counted within the call's input)."""

    rows: Tensor
    lengths: Tensor

    def check(self, batch_size: int, length: int) -> None:
        """Raise unless every row is in ``[0, batch_size)`` and every length in ``[0, length]``."""
        if self.rows.numel() and (int(self.rows.min()) < 0 or int(self.rows.max()) >= batch_size):
            raise ValueError(f"state query rows must be in [0, {batch_size}), got {self.rows.tolist()}")
        if self.lengths.numel() and (int(self.lengths.min()) < 0 or int(self.lengths.max()) > length):
            raise ValueError(f"state query lengths must be in [0, {length}], got {self.lengths.tolist()}")
