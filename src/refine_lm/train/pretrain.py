"""Pretraining from scratch with next-token prediction: ``refine-lm pretrain``."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from ..config import ConfigError, _merged, from_dict, to_dict
from ..models.registry import build_config, build_model, load_model
from ..optim import OptimConfig
from ..ranks import is_main
from ..refine.ntp import NextTokenObjective
from .checkpoint import list_checkpoints
from .data import DataConfig, TrainingData
from .loop import LoopConfig, train
from .metrics import read_metrics


@dataclass
class ModelSpec:
    """A model to build: an architecture, a preset, and config fields that override the preset's.

    arch: ``delta_net``, ``gated_deltanet`` or ``lact``.
    preset: ``tiny``, ``small`` or null.
    config: Hugging Face config fields (e.g. ``hidden_size``); the vocabulary and special-token ids
        always come from the corpus's tokenizer.
    """

    arch: str = "delta_net"
    preset: str | None = "small"
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        build_config(self.arch, self.preset, **self.config)  # an unknown arch, preset or setting fails at start-up


@dataclass
class PretrainStage:
    """One stage of a curriculum, trained from the weights the stage before it ended with (the first from
    scratch), with its own optimiser state and learning-rate schedule.

    name: the stage's output directory, ``<output_dir>/<name>``.
    data / optim / loop: the settings in which the stage differs from the run's ``data``, ``optim`` and
        ``loop`` (e.g. ``data: {corpus: runs/data/pairs, seq_len: 512}``, ``loop: {steps: 250}``).
    """

    name: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    loop: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"a stage needs a name that can be a directory name, got {self.name!r}")


@dataclass
class PretrainConfig:
    """Settings of ``refine-lm pretrain``.

    model / data / optim / loop: see their classes.
    output_dir: checkpoints (``checkpoint-<step>/``, Hugging Face directories with the tokenizer) and
        ``metrics.jsonl``; with stages, one directory per stage inside it.
    export_to: if set, the final model is also written there as a clean Hugging Face directory
        (config, weights, tokenizer) with ``training.yaml`` (these settings) and ``results.json``.
    init_from: a checkpoint directory (e.g. another architecture's base) whose parameters start the run (its
        first stage) wherever the new model has a parameter of the same name (of another shape: an error);
        the new model's other parameters (a Gated DeltaNet's decay and output gates, started from DeltaNet)
        keep their initialisation; a parameter the new model keeps fused (LaCT's ``qkv`` and its short
        convolution) is assembled from the checkpoint's separate parts (a DeltaNet's q/k/v); null: from scratch.
    stages: a curriculum (see :class:`PretrainStage`), run in order; empty: one run of the settings above.
        An interrupted curriculum resumes in the stage it stopped in.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=50))
    loop: LoopConfig = field(default_factory=LoopConfig)
    output_dir: str = "runs/pretrain"
    export_to: str | None = None
    init_from: str | None = None
    stages: list[PretrainStage] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must differ, got {names}")
        for stage in self.stages:
            self.stage_config(stage)  # a stage's unknown or bad setting fails at start-up

    def stage_config(self, stage: PretrainStage) -> PretrainConfig:
        """The settings of one stage: the run's, with the stage's differences, in the stage's directory."""
        sections = {}
        for name, cls in (("data", DataConfig), ("optim", OptimConfig), ("loop", LoopConfig)):
            given = _merged(asdict(getattr(self, name)), getattr(stage, name))
            sections[name] = from_dict(cls, given, source="pretrain config", prefix=f"stages.{stage.name}.{name}.")
        return replace(self, **sections, output_dir=str(Path(self.output_dir) / stage.name), export_to=None, stages=[])


def pretrain(cfg: PretrainConfig) -> dict[str, float]:
    """Train (every stage of) ``cfg`` and export the final model if ``export_to`` is set."""
    if not cfg.stages:
        result, n_params = _train(cfg, init=None)
        runs = [cfg]
    else:
        init = None
        runs = [cfg.stage_config(stage) for stage in cfg.stages]
        for stage, run in zip(cfg.stages, runs):
            if is_main():
                start = init or (f"{cfg.init_from} (warm start)" if cfg.init_from else "scratch")
                print(f"stage {stage.name}: {run.loop.steps} steps on {run.data.corpus}, from {start}")
            result, n_params = _train(run, init)
            init = list_checkpoints(run.output_dir)[-1]
    if cfg.export_to:
        last = TrainingData(runs[-1].data, runs[-1].loop.batch_size, runs[-1].loop.seed)
        result = {**result, **last.unigram_baseline()}
        tokens = sum(r.loop.steps * r.loop.batch_size * r.data.seq_len for r in runs)
        export(cfg, list_checkpoints(runs[-1].output_dir)[-1], result, n_params, tokens, [r.output_dir for r in runs])
    return result


def _train(cfg: PretrainConfig, init: Path | None) -> tuple[dict[str, float], int]:
    """One run of ``cfg`` (no stages), from scratch or from the weights of checkpoint ``init``."""
    torch.manual_seed(cfg.loop.seed)
    data = TrainingData(cfg.data, cfg.loop.batch_size, cfg.loop.seed)
    tokenizer = data.tokenizer()
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    model = build_model(
        cfg.model.arch, cfg.model.preset, seed=cfg.loop.seed, **{**cfg.model.config, "vocab_size": len(tokenizer), **special}
    )
    if init is not None:
        previous = load_model(init).state_dict()
        if previous["model.embeddings.weight"].shape != model.model.embeddings.weight.shape:
            raise ConfigError(
                f"{cfg.data.corpus}: its vocabulary ({len(tokenizer)} tokens) is not that of {init} "
                f"({previous['model.embeddings.weight'].shape[0]}): every stage needs the same tokenizer"
            )
        model.load_state_dict(previous)
    elif cfg.init_from:
        kept = warm_start(model, Path(cfg.init_from))
        if is_main():
            print(f"init_from {cfg.init_from}: every parameter copied but {', '.join(kept) or 'none'} (initialised afresh)")
    n_params = sum(p.numel() for p in model.parameters())
    tokens = cfg.loop.steps * cfg.loop.batch_size * cfg.data.seq_len
    if is_main():
        described = data.train.describe(brief=True)
        print(f"{cfg.model.arch}: {n_params / 1e6:.2f}M parameters; {tokens:,} training tokens; {described}")
    result = train(
        cfg.loop,
        cfg.optim,
        model,
        NextTokenObjective(cfg.loop.micro),
        data.batch_at,
        cfg.output_dir,
        validate=data.validator(),
        tokenizer=tokenizer,
        run_config={**to_dict(cfg), "init": None if init is None else str(init)},
    )
    return result, n_params


def warm_start(model: torch.nn.Module, source: Path) -> list[str]:
    """Copy into ``model`` every parameter of checkpoint ``source`` that it has under the same name; return the
    model's parameters that ``source`` lacks (per layer: ``layers.*.``), which keep their initialisation."""
    try:
        theirs = load_model(source).state_dict()
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"init_from: {e}") from None
    ours = model.state_dict()
    for name in sorted(ours.keys() & theirs.keys()):
        if ours[name].shape != theirs[name].shape:
            raise ConfigError(
                f"init_from: {source} has {name} of shape {tuple(theirs[name].shape)}, this model "
                f"{tuple(ours[name].shape)}: the model's sizes (model.preset, model.config and the corpus's vocabulary) "
                "must match the checkpoint's"
            )
    shared = {name: tensor for name, tensor in theirs.items() if name in ours}
    shared.update(_fused_from_parts(model, theirs, ours.keys() - theirs.keys()))
    for name in sorted(shared.keys() - theirs.keys()):
        if ours[name].shape != shared[name].shape:
            raise ConfigError(
                f"init_from: {source}'s parts of {name} make a tensor of shape {tuple(shared[name].shape)}, this model "
                f"has {tuple(ours[name].shape)}: the model's sizes must match the checkpoint's"
            )
    if not shared:
        raise ConfigError(f"init_from: {source} shares no parameter name with a {model.config.model_type} model")
    model.load_state_dict(shared, strict=False)
    return sorted({re.sub(r"layers\.\d+\.", "layers.*.", name) for name in ours.keys() - shared.keys()})


def _fused_from_parts(model: torch.nn.Module, theirs: dict[str, Tensor], missing: set[str]) -> dict[str, Tensor]:
    """The model's fused parameters that the checkpoint keeps apart (a module's ``fused_parameters``: LaCT's
    ``qkv`` from a DeltaNet's ``q_proj``, ``k_proj``, ``v_proj``), concatenated from their parts."""
    out = {}
    for prefix, module in model.named_modules():
        for fused, parts in getattr(module, "fused_parameters", {}).items():
            name, part_names = f"{prefix}.{fused}", [f"{prefix}.{part}" for part in parts]
            if name in missing and all(part in theirs for part in part_names):
                out[name] = torch.cat([theirs[part] for part in part_names])
    return out


def export(
    cfg: PretrainConfig,
    checkpoint: Path,
    result: dict[str, float],
    n_params: int,
    tokens: int,
    output_dirs: list[str],
) -> Path:
    """Copy the model and tokenizer files of ``checkpoint`` to ``cfg.export_to`` with the run's settings and
    the training time summed over ``output_dirs`` (its stages) (rank 0 does it; the other data-parallel ranks
    only return the path)."""
    target = Path(cfg.export_to)
    if not is_main():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for path in checkpoint.iterdir():
        if path.is_file() and path.name not in ("trainer_state.pt", "checkpoint.json"):
            shutil.copy2(path, target / path.name)
    (target / "training.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    records = [r for d in output_dirs for r in read_metrics(Path(d) / "metrics.jsonl")]
    seconds = sum(r.get("step_seconds", 0.0) for r in records if r.get("split") == "train")
    summary = {"parameters": n_params, "training_tokens": tokens, "train_seconds": round(seconds, 1), "validation": result}
    (target / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"exported {checkpoint} -> {target}")
    return target
