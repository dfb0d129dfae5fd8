"""The shared training loop: learning, accumulation, NaN guard, atomic checkpoints and exact resume."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from refine_lm.models.registry import build_model
from refine_lm.optim import OptimConfig, lr_factor
from refine_lm.refine.ntp import NextTokenObjective, next_token_metrics
from refine_lm.train.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint
from refine_lm.train.loop import LoopConfig, TrainingError, train
from refine_lm.train.metrics import read_metrics


def periodic_batch(step: int, batch: int = 4, length: int = 32, period: int = 3, vocab: int = 16) -> torch.Tensor:
    """Sequences repeating a random motif: learnable by a tiny model in a few steps."""
    g = torch.Generator().manual_seed(10_000 + step)
    motif = torch.randint(0, vocab, (batch, period), generator=g)
    return motif.repeat(1, length // period + 1)[:, :length]


def run(tmp_path, steps=6, objective=None, batch_at=periodic_batch, **loop_kwargs):
    torch.manual_seed(0)
    model = build_model("delta_net", "tiny", seed=0)
    loop = LoopConfig(steps=steps, batch_size=4, **loop_kwargs)
    metrics = train(
        loop,
        OptimConfig(lr=1e-2, schedule="cosine", warmup_steps=2),
        model,
        objective or NextTokenObjective(loop.micro),
        batch_at,
        tmp_path,
        validate=lambda m: next_token_metrics(m, [periodic_batch(-1 - i) for i in range(2)]),
    )
    return model, metrics


def test_a_short_run_lowers_validation_loss_and_writes_everything(tmp_path):
    model = build_model("delta_net", "tiny", seed=0)
    before = next_token_metrics(model, [periodic_batch(-1 - i) for i in range(2)])
    _, after = run(tmp_path, steps=25)
    assert after["loss"] < before["loss"] - 1.0
    assert after["acc_argmax"] > before["acc_argmax"]
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 26))
    assert {"loss", "grad_norm", "lr", "tokens_per_s"} <= set(records[0])
    final = list_checkpoints(tmp_path)[-1]
    assert final.name == "checkpoint-0000025"
    assert verify_checkpoint(final)["step"] == 25
    assert (final / "config.json").is_file() and (final / "model.safetensors").is_file()


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    whole, _ = run(tmp_path / "a", steps=3)
    accumulated, _ = run(tmp_path / "b", steps=3, micro_batch_size=1)
    for (name, a), (_, b) in zip(whole.named_parameters(), accumulated.named_parameters()):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name


def test_keep_last_prunes_old_checkpoints(tmp_path):
    run(tmp_path, steps=6, save_every=1, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-0000005", "checkpoint-0000006"]


def test_corrupt_and_half_written_checkpoints_are_refused(tmp_path):
    run(tmp_path, steps=2)
    ckpt = list_checkpoints(tmp_path)[-1]
    weights = ckpt / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match"):
        verify_checkpoint(ckpt)
    (ckpt / "checkpoint.json").unlink()
    warned = pytest.warns(UserWarning, match=r"incomplete: checkpoint\.json is missing")
    with warned, pytest.raises(TrainingError, match="no checkpoint there is intact"):
        run(tmp_path, steps=4)  # resuming refuses it instead of loading garbage


class FlakyObjective(NextTokenObjective):
    """NaN loss at the given steps (counted in calls to updates())."""

    def __init__(self, micro: int, bad_calls: set[int]):
        super().__init__(micro)
        self.calls, self.bad_calls = 0, bad_calls

    def updates(self, model, batch, generator):
        self.calls += 1
        for micro_batches in super().updates(model, batch, generator):
            yield [(ids, n, self.calls in self.bad_calls) for ids, n in micro_batches]

    def loss(self, model, micro):
        ids, n, bad = micro
        loss, metrics = super().loss(model, (ids, n))
        return (loss * float("nan") if bad else loss), metrics


def test_non_finite_updates_are_skipped_then_stop_the_run(tmp_path):
    model, _ = run(tmp_path / "ok", steps=4, objective=FlakyObjective(4, {2}))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    events = [r for r in read_metrics(tmp_path / "ok" / "metrics.jsonl") if r.get("event") == "skipped_update"]
    assert [e["step"] for e in events] == [2]
    with pytest.raises(TrainingError, match="3 non-finite updates in a row"):
        run(tmp_path / "bad", steps=6, objective=FlakyObjective(4, {2, 3, 4}))


def test_lr_schedule_warmup_and_cosine():
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    assert [round(lr_factor(s, cfg, 12), 3) for s in (0, 1, 2, 7, 12)] == [0.5, 1.0, 1.0, 0.55, 0.1]
    assert lr_factor(5, OptimConfig(lr=1.0), 10) == 1.0


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_train_loop import periodic_batch
    from refine_lm.models.registry import build_model
    from refine_lm.refine.objective import RefineConfig, RefineObjective
    from refine_lm.train.loop import LoopConfig, train
    from refine_lm.refine.ntp import NextTokenObjective
    from refine_lm.optim import OptimConfig

    out, kill_at, method = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    def batch_at(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no clean-up, like a crash or an OOM kill
        return periodic_batch(step)

    torch.manual_seed(0)
    model = build_model("delta_net", "tiny", seed=0)
    loop = LoopConfig(steps=8, batch_size=4, micro_batch_size=2, save_every=3)
    if method == "refine":  # samples rollouts: every random draw must replay identically after the resume
        objective = RefineObjective(RefineConfig(num_chunks=2, rollout_len=3, margin=2, mini_batches=2, ppo_epochs=2), 1)
    else:
        objective = NextTokenObjective(2)
    train(loop, OptimConfig(lr=1e-2, schedule="cosine", warmup_steps=2), model, objective, batch_at, out)
    """
)


@pytest.mark.parametrize("method", ["ntp", "refine"])
def test_killed_run_resumes_to_identical_weights(tmp_path, method):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(__import__("pathlib").Path(__file__).parent)))

    def launch(out, kill_at):
        return subprocess.run([sys.executable, str(script), str(out), str(kill_at), method], capture_output=True, text=True)

    straight = launch(tmp_path / "straight", -1)
    assert straight.returncode == 0, straight.stderr
    killed = launch(tmp_path / "killed", 7)  # dies during step 8, after the checkpoint of step 6
    assert killed.returncode == -9
    assert [p.name for p in list_checkpoints(tmp_path / "killed")] == ["checkpoint-0000003", "checkpoint-0000006"]
    resumed = launch(tmp_path / "killed", -1)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout

    a = load_file(list_checkpoints(tmp_path / "straight")[-1] / "model.safetensors")
    b = load_file(list_checkpoints(tmp_path / "killed")[-1] / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(7) == 1  # records of the lost step were not duplicated
