"""Precision policy: statistics and recurrences run in fp32 — or fp64 when the inputs are fp64 (tests) —
and autocast (bf16 projections and MLPs) is chosen by what the hardware runs fast."""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from typing import Literal

import torch
from torch import Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least fp32 (bf16 / fp16 -> fp32; fp32 and fp64 unchanged)."""
    return x.to(compute_dtype(x))


# ----- autocast precision: bf16 where the hardware makes it fast, fp32 elsewhere ---------------------------
Precision = Literal["auto", "fp32", "bf16"]
_announced: set[tuple[str, str, str]] = set()


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 matmuls beat fp32 on ``device``: CUDA with bf16 support, or an x86 CPU with AMX or
    AVX512-BF16 (without them, oneDNN emulates bf16 and a matmul runs tens of times slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``fp32`` or ``bf16`` for ``precision`` on ``device``; ``auto`` picks bf16 only where it is fast.
    The choice is printed once per (setting, device); explicit bf16 where it is slow warns."""
    device = torch.device(device)
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    fast = bf16_is_fast(device)
    chosen = ("bf16" if fast else "fp32") if precision == "auto" else precision
    key = (precision, device.type, chosen)
    if key not in _announced:
        _announced.add(key)
        where = "CUDA" if device.type == "cuda" else f"this CPU ({torch.backends.cpu.get_cpu_capability()})"
        if precision == "auto":
            why = "bf16 is fast" if fast else "no native bf16 (AMX / AVX512-BF16)"
            print(f"precision auto -> {chosen} on {where}: {why}", file=sys.stderr)
        elif chosen == "bf16" and not fast:
            warnings.warn(
                f"precision bf16 on {where}, which has no native bf16: matmuls run emulated, typically 10-50x slower "
                "than fp32; use precision=auto or fp32",
                stacklevel=2,
            )
    return chosen


def autocast(precision: str, device: torch.device | str):
    """The autocast context of a resolved precision: bf16 for projections and MLPs, or nothing."""
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
