"""refine-lm pretrain and refine-lm train (mid-training with REFINE or SFT) end to end on a tiny corpus."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from refine_lm.cli import main
from refine_lm.models.registry import load_model
from refine_lm.train.checkpoint import list_checkpoints
from refine_lm.train.metrics import read_metrics

LOOP = ["loop.batch_size=2", "loop.log_every=1"]


@pytest.fixture(scope="module")
def tiny_base(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    args = ["pretrain", f"data.corpus={tiny_corpus}", "data.seq_len=128", "model.preset=tiny", "loop.steps=12", *LOOP]
    args += [f"output_dir={out / 'run'}", f"export_to={out / 'base'}", "optim.lr=1e-2", "optim.warmup_steps=1"]
    assert main(args) == 0
    return out / "base"


def test_pretrain_exports_a_loadable_base_with_its_tokenizer(tiny_base):
    model = load_model(tiny_base)
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert model.config.vocab_size == len(tokenizer)
    results = json.loads((tiny_base / "results.json").read_text())
    assert results["training_tokens"] == 12 * 2 * 128 and "loss" in results["validation"]
    assert (tiny_base / "training.yaml").is_file()


@pytest.mark.parametrize("method", ["refine", "sft"])
def test_midtrain_logs_losses_rewards_and_validation(tiny_corpus, tiny_base, tmp_path, method):
    out = tmp_path / method
    args = ["train", "--phase", "mid", "--method", method, f"model={tiny_base}", f"data.corpus={tiny_corpus}"]
    args += ["data.seq_len=128", "loop.steps=2", *LOOP, f"output_dir={out}", "optim.lr=1e-4"]
    args += ["refine.num_chunks=2", "refine.margin=8"]
    assert main(args) == 0
    train = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert len(train) == 2
    common = {"loss", "grad_norm", "lr", "tokens_per_s", "step_seconds", "compute_tokens"}
    refine = {"ntp_loss", "pg_loss", "reward_cosine_mean", "reward_cosine_std", "reward_exact_mean", "reward_hybrid_mean",
              "clip_frac", "dual_clip_frac", "approx_kl", "entropy_selected", "entropy_all"}  # fmt: skip
    assert common <= set(train[0]) and (refine <= set(train[0])) == (method == "refine")
    validation = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "validation"]
    assert {"loss", "acc_argmax", "acc_sampled"} <= set(validation[-1])


def test_sft_compute_matched_to_a_refine_run(tiny_corpus, tiny_base, tmp_path, capsys):
    common = [
        f"model={tiny_base}",
        f"data.corpus={tiny_corpus}",
        "data.seq_len=128",
        *LOOP,
        "refine.num_chunks=2",
        "refine.margin=8",
    ]
    assert main(["train", "--method", "refine", "loop.steps=2", f"output_dir={tmp_path / 'r'}", *common]) == 0
    refine_compute = sum(r["compute_tokens"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if r["split"] == "train")
    assert (
        main(["train", "--method", "sft", f"sft.match_compute_of={tmp_path / 'r'}", f"output_dir={tmp_path / 's'}", *common]) == 0
    )
    sft_steps = [r for r in read_metrics(tmp_path / "s" / "metrics.jsonl") if r["split"] == "train"]
    assert len(sft_steps) == round(refine_compute / (3 * 2 * 128)) > 2
    assert "compute-matched" in capsys.readouterr().out


def test_mismatched_tokenizer_is_refused(tiny_corpus, tmp_path, capsys):
    from refine_lm.models.registry import build_model

    build_model("delta_net", "tiny").save_pretrained(tmp_path / "m")
    from refine_lm.data.tokenizer import train_tokenizer
    from refine_lm.eval.synthetic import tokenizer_training_text

    train_tokenizer(tokenizer_training_text(), vocab_size=512).save_pretrained(tmp_path / "m")
    assert main(["train", f"model={tmp_path / 'm'}", f"data.corpus={tiny_corpus}", "data.seq_len=128"]) == 2
    assert "different tokenizers" in capsys.readouterr().err


def test_demo_end_to_end_at_toy_size(tiny_corpus, tiny_base, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", f"base={tiny_base}", f"data.corpus={tiny_corpus}", "data.seq_len=128", "data.validation_sequences=2"]
    args += ["data.recall_sequences=2", "loop.steps=2", "loop.batch_size=2", "refine.num_chunks=2", "refine.margin=8"]
    args += [
        "niah_lengths=[512]",
        "niah.depths=[0,100]",
        "niah.samples_per_depth=1",
        "niah.max_new_tokens=4",
        f"output_dir={out}",
    ]
    assert main(args) == 0
    report = (out / "report.md").read_text()
    for row in ("| base |", "| refine |", "| sft |"):
        assert row in report
    assert (out / "curves.png").is_file() and (out / "eval" / "refine" / "niah_single.png").is_file()
    assert "report:" in capsys.readouterr().out


def test_pretraining_lowers_validation_loss_below_unigram(tiny_corpus, tiny_base):
    from refine_lm.models.registry import build_model
    from refine_lm.train.data import DataConfig, TrainingData

    data = TrainingData(DataConfig(corpus=str(tiny_corpus), seq_len=128), batch_size=2, seed=0)
    untrained = data.validator()(build_model("delta_net", "tiny", seed=0, vocab_size=len(data.tokenizer())))
    trained = json.loads((tiny_base / "results.json").read_text())["validation"]
    assert trained["loss"] < untrained["loss"] - 0.5
    assert trained["unigram_ppl"] > 1 and trained["unigram_loss"] < untrained["loss"]


def test_a_gated_deltanet_warm_started_from_a_deltanet_base_keeps_its_shared_weights(tiny_corpus, tiny_base, tmp_path):
    from refine_lm.config import ConfigError
    from refine_lm.models.registry import build_model
    from refine_lm.train.pretrain import warm_start

    args = ["pretrain", f"data.corpus={tiny_corpus}", "data.seq_len=64", "model.arch=gated_deltanet", "model.preset=tiny"]
    args += ["model.config={num_heads: 4, head_dim: 16, expand_v: 1}"]  # the heads of DeltaNet's tiny preset
    args += ["loop.steps=1", *LOOP, "optim.lr=1e-12", "optim.warmup_steps=0", f"output_dir={tmp_path / 'run'}"]
    assert main([*args, f"init_from={tiny_base}"]) == 0
    deltanet, gated = load_model(tiny_base).state_dict(), load_model(list_checkpoints(tmp_path / "run")[-1]).state_dict()
    shared = deltanet.keys() & gated.keys()
    assert {"model.embeddings.weight", "model.layers.0.attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"} <= shared
    assert all(torch.allclose(deltanet[name], gated[name], atol=1e-9) for name in shared)  # one step at lr 1e-12

    vocab = deltanet["lm_head.weight"].shape[0]
    fresh = build_model("gated_deltanet", "tiny", num_heads=4, head_dim=16, expand_v=1, vocab_size=vocab)
    gates = ["A_log", "a_proj.weight", "dt_bias", "g_proj.weight"]
    assert warm_start(fresh, tiny_base) == [f"model.layers.*.attn.{name}" for name in gates]
    with pytest.raises(ConfigError, match=r"init_from: .*b_proj\.weight of shape \(4, 64\), this model \(2, 64\)"):
        warm_start(build_model("gated_deltanet", "tiny", vocab_size=vocab), tiny_base)  # 2 heads of 16
    with pytest.raises(ConfigError, match=r"init_from: .*no config\.json"):
        warm_start(fresh, tmp_path)


def test_interrupted_pretraining_resumes_identically(tiny_corpus, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from refine_lm.train import data as train_data
    from refine_lm.train.checkpoint import list_checkpoints

    args = ["pretrain", f"data.corpus={tiny_corpus}", "data.seq_len=128", "model.preset=tiny", "loop.steps=4", *LOOP]
    args += ["loop.save_every=2", "optim.lr=3e-3"]
    assert main([*args, f"output_dir={tmp_path / 'straight'}"]) == 0

    original = train_data.TrainingData.batch_at

    def stop_at_step_3(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(train_data.TrainingData, "batch_at", stop_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        main([*args, f"output_dir={tmp_path / 'cut'}"])
    monkeypatch.setattr(train_data.TrainingData, "batch_at", original)
    assert main([*args, f"output_dir={tmp_path / 'cut'}"]) == 0
    a = load_file(list_checkpoints(tmp_path / "straight")[-1] / "model.safetensors")
    b = load_file(list_checkpoints(tmp_path / "cut")[-1] / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_curriculum_trains_each_stage_from_the_one_before(tiny_corpus, tmp_path):
    from refine_lm.config import ConfigError, load_config
    from refine_lm.train.pretrain import PretrainConfig, pretrain

    settings = [
        f"data.corpus={tiny_corpus}",
        "data.seq_len=64",
        "data.validation_sequences=2",
        "data.recall_sequences=0",
        "model.preset=tiny",
        "loop.steps=2",
        "loop.batch_size=2",
        "loop.eval_every=0",
        "loop.save_every=0",
        f"output_dir={tmp_path / 'run'}",
        f"export_to={tmp_path / 'base'}",
        "stages=[{name: short, data: {seq_len: 32}, optim: {lr: 0.01}, loop: {steps: 3}}, {name: long}]",
    ]
    cfg = load_config(PretrainConfig, None, settings)
    short, long = (cfg.stage_config(s) for s in cfg.stages)
    assert (short.data.seq_len, short.optim.lr, short.loop.steps) == (32, 0.01, 3)
    assert (long.data.seq_len, long.optim.lr, long.loop.steps) == (64, cfg.optim.lr, 2)
    pretrain(cfg)
    first, second = tmp_path / "run" / "short", tmp_path / "run" / "long"
    (end_of_first,) = list_checkpoints(first)
    trainer_state = torch.load(list_checkpoints(second)[-1] / "trainer_state.pt", weights_only=False)
    assert trainer_state["step"] == 2 and trainer_state["config"]["init"] == str(end_of_first)
    results = json.loads((tmp_path / "base" / "results.json").read_text())
    assert results["training_tokens"] == 3 * 2 * 32 + 2 * 2 * 64
    # run again: both stages are complete, so nothing trains and the same model is exported
    weights = (tmp_path / "base" / "model.safetensors").read_bytes()
    pretrain(cfg)
    assert [p.name for p in list_checkpoints(first)] == [end_of_first.name]
    assert (tmp_path / "base" / "model.safetensors").read_bytes() == weights
    with pytest.raises(ConfigError, match=r"stages\.short\.data\.: unknown key 'seqlen'|stages\.short\.data\.seqlen"):
        load_config(PretrainConfig, None, [*settings[:-1], "stages=[{name: short, data: {seqlen: 32}}]"])


def test_a_lact_warm_started_from_a_deltanet_base_reads_its_keys_and_values(tiny_base, tmp_path):
    """LaCT's fused qkv projection and short convolution are assembled from DeltaNet's q/k/v parts, so (without
    RoPE on the fast weights) the fast-weight branch starts with the DeltaNet base's own queries, keys and values."""
    from refine_lm.config import ConfigError
    from refine_lm.models.registry import build_model
    from refine_lm.ops.conv import causal_conv1d
    from refine_lm.train.pretrain import warm_start

    deltanet = load_model(tiny_base).double()
    vocab = deltanet.config.vocab_size
    lact = build_model("lact", "tiny", vocab_size=vocab, num_lact_heads=4, use_short_conv=True, ttt_nope=True).double()
    kept = warm_start(lact, tiny_base)
    assert "model.layers.*.attn.qkv.weight" not in kept and "model.layers.*.attn.qkv_conv1d.weight" not in kept
    theirs, ours = deltanet.model.layers[1].attn, lact.model.layers[1].attn
    assert torch.equal(ours.qkv.weight, torch.cat([theirs.q_proj.weight, theirs.k_proj.weight, theirs.v_proj.weight]))

    x = torch.randn(2, 9, 64, dtype=torch.float64)
    weight, _ = theirs._conv_params()
    q, k, v, _, _ = theirs._heads(x, causal_conv1d(theirs._project(x), weight)[0])
    qkv, _ = causal_conv1d(ours.qkv(x), ours.qkv_conv1d.weight[:, 0])
    _, _, _, fq, fk, fv, _, _ = ours._project(x, qkv, torch.arange(9).expand(2, 9))
    # q and k: the same directions (the two L2 norms differ only in their epsilon: fla's squared 1e-6, lact_llm's 1e-5)
    direction = lambda t: torch.nn.functional.normalize(t, dim=-1)
    assert torch.allclose(direction(fq), direction(q), atol=1e-12) and torch.allclose(direction(fk), direction(k), atol=1e-12)
    assert torch.allclose(fv, v, atol=1e-12)

    narrow_keys = tmp_path / "narrow_keys"  # a DeltaNet with keys of half the width: its q, k, v make no qkv of ours
    build_model("delta_net", "tiny", vocab_size=vocab, expand_k=0.5).save_pretrained(narrow_keys)
    with pytest.raises(ConfigError, match=r"init_from: .*parts of model\.layers\.0\.attn\.qkv\.weight make .* \(128, 64\)"):
        warm_start(lact, narrow_keys)
