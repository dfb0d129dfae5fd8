"""The refine-lm command line."""

from __future__ import annotations

import json

import pytest

from refine_lm.cli import main
from refine_lm.cli.bench import BENCHMARKS, load_benchmark
from refine_lm.models.registry import load_model


def test_generate_builds_saves_and_reloads(tmp_path, capsys):
    target = tmp_path / "tiny"
    assert main(["generate", f"save_to={target}", "max_new_tokens=5", "num_samples=2", "prompt=Hi"]) == 0
    printed = capsys.readouterr().out
    assert "sample 1" in printed and "decode:" in printed
    assert load_model(target).config.model_type == "delta_net"
    # a random model has no tokenizer (it reads bytes): its saved directory has none to load
    assert main(["generate", f"model={target}", "do_sample=false", "max_new_tokens=3"]) == 2
    assert "no tokenizer.json or tokenizer_config.json" in capsys.readouterr().err


def test_generate_with_a_config_file_and_gated_model(tmp_path, capsys):
    path = tmp_path / "gen.yaml"
    path.write_text("model: random:gated_deltanet:tiny\nmax_new_tokens: 4\nprecision: bf16\n")
    assert main(["generate", "--config", str(path)]) == 0
    assert "gated_deltanet" in capsys.readouterr().out


def test_bad_settings_exit_2_with_a_message(tmp_path, capsys):
    path = tmp_path / "gen.yaml"
    path.write_text("max_tokens: 4\n")
    assert main(["generate", "--config", str(path)]) == 2
    assert f"{path}: unknown key 'max_tokens'" in capsys.readouterr().err
    assert main(["generate", "model=random:transformer"]) == 2
    assert "random:<arch>" in capsys.readouterr().err
    assert main(["generate", f"model={tmp_path}"]) == 2
    assert "no config.json" in capsys.readouterr().err


def test_bench_models_runs_at_toy_sizes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = [
        "bench", "models", "archs=[gated_deltanet,lact]", "preset=tiny", "train_len=40", "decode_batches=[2]",
        "decode_tokens=2", "prefill_lengths=[64,128]", "ratio_lengths=[64,128]", "repeats=1", f"output={out}",
    ]  # fmt: skip
    assert main(args) == 0
    assert out.is_file() and out.with_suffix(".png").is_file() and "memory ratio" in capsys.readouterr().out


def test_bench_scale_runs_at_toy_sizes(tmp_path, capsys):
    out = tmp_path / "scale.json"
    args = ["bench", "scale", "model=random:delta_net:tiny", "lengths=[64]", "steps=2", "num_chunks=2", f"output={out}"]
    assert main(args) == 0
    assert "tokens/s (all ranks)" in capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    assert [r["method"] for r in results] == ["sft", "refine"] and all(r["tokens_per_s"] > 0 for r in results)


def test_bench_refine_runs_at_toy_sizes(tmp_path, capsys):
    out = tmp_path / "refine.json"
    args = ["bench", "refine", "model=random:delta_net:tiny", "lengths=[96,128]", "num_chunks=2", "repeats=1",
            "reprefill_max_len=128", "reprefill_one_pass_max_len=96", "reprefill_rows_per_pass=1",
            f"output={out}"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| 96 |" in printed and "peak mem REFINE" in printed
    results = json.loads(out.read_text())["results"]
    assert {"reprefill_one_pass", "reprefill_grouped"} <= results["96"].keys()
    assert "reprefill_one_pass" not in results["128"] and results["128"]["reprefill_grouped"]["peak_mib"] > 0
    assert results["128"]["memory_refine_over_sft"] > 0 and results["128"]["reprefill_grouped_over_refine"] > 0


@pytest.mark.parametrize("script", sorted(BENCHMARKS.glob("bench_*.py")), ids=lambda p: p.stem)
def test_every_benchmark_script_loads_as_a_module(script):
    """bench gpu loads its sibling scripts the way the CLI does; a dataclass with a dotted annotation needs the
    module registered while it executes."""
    module = load_benchmark(script.stem.removeprefix("bench_"))
    assert callable(module.main)


def test_bench_gpu_plumbing_runs_on_cpu_at_toy_sizes(tmp_path, capsys):
    """make gpu-check's script, on the CPU with tiny models and backend chunk only (the GPU run is the real one)."""
    out = tmp_path / "gpu.json"
    args = ["bench", "gpu", "device=cpu", "shapes=[tiny]", "archs=[gated_deltanet]", "lengths=[96]", "backends=[chunk]",
            "precision=fp32", "target_length=96", "reprefill_max_len=0", "refine_overrides=[num_chunks=2]",
            "lact_preset=tiny", "lact_length=24", "decode_tokens=2", "tests=false", "models=false", f"output={out}"]  # fmt: skip
    assert main(args) == 0
    assert "| gated_deltanet:tiny | — | — |" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["refine"]["gated_deltanet:tiny"]["chunk"]["96"]["refine_over_sft"] > 0
    assert report["lact"]["decode_tokens_per_s"] > 0 and (tmp_path / "gpu_refine_gated_deltanet_tiny_chunk.json").is_file()


def test_flags_are_overrides_too(tmp_path, capsys):
    target = tmp_path / "m"
    assert main(["generate", "--save-to", str(target), "--max-new-tokens", "2", "--do-sample=false", "--prompt", "ab"]) == 0
    assert (target / "config.json").is_file()
    assert main(["generate", "--max-tokens", "2"]) == 2
    assert "unknown key 'max_tokens'" in capsys.readouterr().err


def test_bench_eval_runs_at_toy_sizes(tmp_path, capsys):
    out = tmp_path / "eval.json"
    args = ["bench", "eval", "preset=tiny", "archs=[delta_net]", "length=300", "examples=2", "batch_sizes=[2]",
            "max_new_tokens=2", f"output={out}"]  # fmt: skip
    assert main(args) == 0
    assert "generated tokens/s" in capsys.readouterr().out
    result = json.loads(out.read_text())["results"]["delta_net"]["2"]
    assert result["generated_tokens"] == 4 and result["prompt_tokens"] > 500


@pytest.mark.parametrize("command", ["demo", "generate", "data", "pretrain", "train", "eval", "study"])
def test_help_lists_every_setting_with_its_type_default_and_doc(command, capsys):
    import importlib

    from refine_lm.config import describe_settings

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    module = importlib.import_module(f"refine_lm.cli.{command}")
    flat = " ".join(text.split())
    for config in module.CONFIGS.values():
        for line in describe_settings(config):
            key = line.split()[0]
            assert " ".join(line.split()) in flat
            assert key.endswith(".*:") or "): " in line, f"{key} has no documentation"
    for key in ("loop.precision", "optim.lr"):
        if command in ("pretrain", "train", "demo"):
            assert f"  {key} (" in text
    if command == "study":
        assert "  arms[].method (base|refine|sft|nested-sft|answer-sft, default refine):" in text
        assert "  train.refine.rollout_len (int" in text


def test_bench_copy_trains_every_arm_on_the_same_batches(tmp_path, capsys):
    out = tmp_path / "copy.json"
    assert main(["bench", "copy", "preset=tiny", "steps=2", "log_every=1", "pairs=3", "batch_size=2", f"output={out}"]) == 0
    logs = json.loads(out.read_text())["logs"]
    assert list(logs) == ["lact", "lact-zero-scale", "delta_net"]
    assert [r["step"] for r in logs["lact"]] == [0, 1, 2]
    assert "| 2 |" in capsys.readouterr().out
    recall = tmp_path / "recall.json"
    assert main(["bench", "copy", "task=recall", "preset=tiny", "steps=0", "pairs=3", "batch_size=2", f"output={recall}"]) == 0
    with pytest.raises(ValueError, match="task must be copy or recall"):
        load_benchmark("copy").main(None, ["task=sort"])
    with pytest.raises(ValueError, match=r"arms\[0\]: needs 'arch'"):
        load_benchmark("copy").main(None, ["arms=[{name: x}]", "steps=0"])
