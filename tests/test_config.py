"""Config loading: YAML + overrides into dataclasses, with errors that name the file and the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from refine_lm.config import ConfigError, load_config


@dataclass
class Optim:
    lr: float = 1e-3
    schedule: Literal["constant", "cosine"] = "constant"


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    seed: int | None = None
    lengths: list[int] = field(default_factory=lambda: [1, 2])
    optim: Optim = field(default_factory=Optim)


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 5\noptim:\n  lr: 0.1\n")
    cfg = load_config(Run, path, ["optim.schedule=cosine", "lengths=[4, 8]", "seed=3"])
    assert cfg == Run(name="run", steps=5, seed=3, lengths=[4, 8], optim=Optim(lr=0.1, schedule="cosine"))
    assert load_config(Run).optim.lr == 1e-3
    assert load_config(Run, overrides=["optim.lr=1"]).optim.lr == 1.0  # ints are fine where floats are expected
    assert load_config(Run, overrides=["optim.lr=3e-4"]).optim.lr == 3e-4  # YAML 1.1 reads this as a string


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("stepz: 5\n", [], r"run.yaml: unknown key 'stepz' for Run"),
        ("optim:\n  learning_rate: 1\n", [], r"unknown key 'optim.learning_rate' for Optim"),
        ("steps: five\n", [], r"run.yaml: steps: expected an integer, got 'five'"),
        ("", ["optim.schedule=linear"], r"optim.schedule: must be one of 'constant', 'cosine'"),
        ("- 1\n- 2\n", [], r"top level must be a mapping"),
        ("", ["steps"], r"must look like key=value"),
        ("steps: [1\n", [], r"invalid YAML"),
    ],
)
def test_errors_name_the_file_and_field(tmp_path, text, overrides, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(Run, path, overrides)


def test_missing_file():
    with pytest.raises(ConfigError, match=r"cannot read config file nope\.yaml"):
        load_config(Run, "nope.yaml")


def test_lists_from_comma_separated_strings_and_single_items():
    assert load_config(Run, overrides=["lengths=1024,2048"]).lengths == [1024, 2048]
    assert load_config(Run, overrides=["lengths=4096"]).lengths == [4096]
    with pytest.raises(ConfigError, match=r"lengths\[1\]: expected an integer"):
        load_config(Run, overrides=["lengths=1,x"])


def test_the_demo_file_and_the_demo_defaults_are_one_demo():
    from refine_lm.demo import DemoConfig

    assert load_config(DemoConfig, "configs/demo.yaml", []) == DemoConfig()


def test_a_section_given_in_part_keeps_the_commands_own_defaults_for_the_rest():
    from refine_lm.demo import DemoConfig

    demo = load_config(DemoConfig, None, ["loop.threads=1", "niah.max_new_tokens=8"])
    assert (demo.loop.steps, demo.loop.batch_size, demo.loop.threads) == (60, 4, 1)  # not LoopConfig's 100 x 8
    assert demo.niah.samples_per_depth == 1 and demo.niah.max_new_tokens == 8


def _shipped_configs():
    from pathlib import Path

    from refine_lm.cli.generate import GenerateConfig
    from refine_lm.data import PrepareConfig
    from refine_lm.demo import DemoConfig
    from refine_lm.study.runner import StudyConfig
    from refine_lm.train.pretrain import PretrainConfig

    kinds = {"data": PrepareConfig, "pretrain": PretrainConfig, "study": StudyConfig}
    for path in sorted(Path("configs").rglob("*.yaml")):
        cls = kinds.get(path.parent.name) or {"demo.yaml": DemoConfig, "demo_generate.yaml": GenerateConfig}[path.name]
        yield pytest.param(cls, path, id=str(path))


@pytest.mark.parametrize(("cls", "path"), list(_shipped_configs()))
def test_every_shipped_config_is_valid(cls, path):
    from refine_lm.study.runner import StudyConfig, expand_grid

    cfg = load_config(cls, path, [])
    if cls is StudyConfig:
        assert expand_grid(cfg)  # every arm's settings are checked, as before a study's first cell
