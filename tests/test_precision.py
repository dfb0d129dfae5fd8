"""``precision: auto``: bf16 autocast only where the hardware runs it fast, fp32 elsewhere, said once;
explicit bf16 where it is slow warns; every command's default is auto."""

from __future__ import annotations

import warnings

import pytest
import torch

from refine_lm.cli.generate import GenerateConfig
from refine_lm.eval.suite import EvalConfig
from refine_lm.ops import dtypes
from refine_lm.train.loop import LoopConfig


@pytest.fixture
def cpu_flags(monkeypatch):
    """Pretend the CPU has the given feature flags (and forget what was announced)."""

    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(dtypes, "_cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(dtypes, "_announced", set())

    return set_flags


def test_auto_is_fp32_without_native_bf16_and_says_so_once(cpu_flags, capsys):
    cpu_flags("avx2", "fma")
    assert not dtypes.bf16_is_fast("cpu")
    assert dtypes.resolve_precision("auto", "cpu") == "fp32"
    assert dtypes.resolve_precision("auto", "cpu") == "fp32"
    err = capsys.readouterr().err
    assert err.count("precision auto -> fp32") == 1 and "no native bf16" in err


@pytest.mark.parametrize("flag", ["amx_bf16", "avx512_bf16"])
def test_auto_is_bf16_on_a_cpu_with_amx_or_avx512_bf16(cpu_flags, capsys, flag):
    cpu_flags("avx512f", flag)
    assert dtypes.resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert "precision auto -> bf16" in capsys.readouterr().err


def test_explicit_bf16_on_a_slow_cpu_warns_and_fp32_never_does(cpu_flags):
    cpu_flags("avx2")
    with pytest.warns(UserWarning, match="no native bf16.*slower than fp32"):
        assert dtypes.resolve_precision("bf16", "cpu") == "bf16"
    cpu_flags("amx_bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dtypes.resolve_precision("bf16", "cpu") == "bf16"
        assert dtypes.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="precision must be auto, fp32 or bf16"):
        dtypes.resolve_precision("fp16", "cpu")


def test_autocast_follows_the_resolved_precision():
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    with dtypes.autocast("bf16", "cpu"):
        assert (x @ w).dtype == torch.bfloat16
    with dtypes.autocast("fp32", "cpu"):
        assert (x @ w).dtype == torch.float32


def test_every_command_defaults_to_auto():
    assert LoopConfig().precision == "auto"
    assert GenerateConfig().precision == "auto"
    assert EvalConfig(model="random:delta_net:tiny", tokenizer="x", tasks=["niah_single"]).precision == "auto"


def test_eval_cache_identity_holds_the_resolved_precision(cpu_flags):
    from refine_lm.eval.suite import fingerprint

    cfg = EvalConfig(model="random:delta_net:tiny", tokenizer="x", tasks=["niah_single"])
    cpu_flags("avx2")
    slow = fingerprint(cfg)
    cpu_flags("amx_bf16")
    assert fingerprint(cfg) != slow and '"precision": "bf16"' in fingerprint(cfg)
