"""Checkpoints: Hugging Face model directories plus the trainer's state, written atomically.

``checkpoint-0000100/`` holds ``config.json``, ``model.safetensors`` and the tokenizer files (so
``from_pretrained`` loads it as is), ``trainer_state.pt`` (optimiser, scheduler, RNG states,
step, anything else the trainer needs for an exact resume) and, written last, ``checkpoint.json``:
the step and the size and SHA-256 of every file. Everything is written into a temporary directory
that is renamed into place only when complete, so a killed run leaves either the whole checkpoint
or none; a checkpoint whose files do not match its manifest is refused with a message naming them.

A run holds its output directory with a :class:`RunLock` while it writes there: a second run on the same
directory is refused, naming the holder; the lock of a run that was killed is taken over.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..files import sha256_file

MANIFEST = "checkpoint.json"
TRAINER_STATE = "trainer_state.pt"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (incomplete, corrupt, or missing)."""


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model,
    trainer_state: dict[str, Any],
    tokenizer=None,
    keep_last: int = 2,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``output_dir/checkpoint-<step>`` atomically and keep only the newest ``keep_last``.

    ``state_dict``: the weights to write instead of the model's own (e.g. gathered from FSDP shards)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step:07d}"
    tmp = output_dir / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save(trainer_state, tmp / TRAINER_STATE)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
    manifest = tmp / MANIFEST
    manifest.write_text(json.dumps({"step": step, "files": files}, indent=2))
    with manifest.open("rb") as f:
        os.fsync(f.fileno())
    if final.exists():  # re-saving the same step (e.g. after a resume)
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete-looking checkpoint directories (renamed into place), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint, after checking every file against it."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete: {MANIFEST} is missing (the run stopped while writing it?)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is unreadable ({e})") from None
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        if file.stat().st_size != expected["bytes"] or sha256_file(file) != expected["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: {name} does not match its recorded size/SHA-256")
    return manifest


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    verify_checkpoint(path)
    return torch.load(Path(path) / TRAINER_STATE, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def newest_intact_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint whose files match its manifest; newer ones that do not are skipped with a warning."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            warnings.warn(f"{e}; resuming from an older checkpoint", stacklevel=2)
            continue
        return path
    return None


def remove_partial_checkpoints(output_dir: str | Path) -> list[Path]:
    """Delete the temporary directories of checkpoints a killed run was writing (call it holding the run's lock)."""
    output_dir = Path(output_dir)
    found = sorted(p for p in output_dir.glob(".tmp-checkpoint-*") if p.is_dir()) if output_dir.is_dir() else []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """``<output_dir>/.lock``: the pid, host and start time of the run writing there."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / ".lock"
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text() or "{}")
                except (OSError, json.JSONDecodeError):
                    holder = {}
                here = holder.get("host") == me["host"]
                if holder and (not here or _alive(int(holder.get("pid", -1)))):
                    raise CheckpointError(
                        f"{self.path.parent} is in use by another run (pid {holder.get('pid')} on {holder.get('host')}, "
                        f"started {holder.get('started')}): use another output directory, or delete {self.path} "
                        "if that run is gone"
                    ) from None
                warnings.warn(f"{self.path}: taking over the lock of a run that is gone ({holder or 'unreadable'})", stacklevel=2)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise CheckpointError(f"{self.path}: could not take the lock")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
