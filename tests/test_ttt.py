"""Test-time training: episodic restores bit for bit and answers do not depend on test order; accumulating
carries the weights; only the chosen parameters adapt; costs per example reach the results."""

from __future__ import annotations

import json
import random

import pytest
import torch

from refine_lm.cli import main
from refine_lm.config import ConfigError
from refine_lm.eval.qa import score_qa, synthetic_qa_examples
from refine_lm.eval.suite import EvalConfig, fingerprint
from refine_lm.eval.ttt import TestTimeTrainer
from refine_lm.refine.objective import RefineConfig

from .conftest import tiny_model

REFINE = RefineConfig(num_chunks=2, rollout_len=3, margin=6, reward="cosine", lambda_rl=1.0)  # rewards vary: sampling matters


def weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Recording(TestTimeTrainer):
    """Also notes the adapted weights of each prompt (a checksum), to compare adaptations across runs."""

    def adapt(self, ids, rng):
        skipped = super().adapt(ids, rng)
        self.adapted_to[tuple(ids[0].tolist())] = sum(float(p.detach().double().sum()) for p in self.params)
        return skipped


def trainer(model, tokenizer, **kwargs) -> Recording:
    settings = dict(method="refine", steps=2, lr=3e-2, refine=REFINE, batch_size=3, progress=False, seed=1, memory_every=0)
    ttt = Recording(model, tokenizer, **{**settings, **kwargs})
    ttt.adapted_to = {}
    return ttt


@pytest.fixture(scope="module")
def examples(eval_tokenizer):
    return synthetic_qa_examples(eval_tokenizer, [220, 260], per_length=2, seed=0, max_new_tokens=5)


def test_adapting_changes_the_weights_and_restore_puts_them_back_bit_for_bit(eval_tokenizer, examples):
    model = tiny_model("delta_net")
    original = weights(model)
    ttt = trainer(model, eval_tokenizer)
    prompt = ttt.encode(examples[0])[0]
    ttt.adapt(torch.tensor([prompt]), ttt.example_random(prompt))
    assert all(not torch.equal(p, original[n]) for n, p in model.named_parameters())  # every parameter adapted
    assert ttt.optimizer.state_dict()["state"]  # AdamW moments exist now
    ttt.restore()
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    assert ttt.optimizer.state_dict() == ttt.initial_optimizer_state
    assert all(p.requires_grad for p in model.parameters())  # freezing during adaptation was undone


@pytest.mark.parametrize("method", ["refine", "ntp"])
def test_episodic_answers_do_not_depend_on_test_order_or_batching(eval_tokenizer, examples, method):
    model = tiny_model("delta_net")
    original = weights(model)
    first = trainer(model, eval_tokenizer, method=method)
    forward = first.run(examples, score_qa)
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())  # restored after the run
    # the evaluator sorts examples by length: permute the prompts of one generate() call directly as well
    prompts = [first.encode(e)[0] for e in examples]
    order = list(range(len(prompts)))
    random.Random(0).shuffle(order)
    second = trainer(model, eval_tokenizer, method=method, batch_size=2)
    permuted = second.generate([prompts[i] for i in order], 5, stop_at_newline=True)
    assert second.adapted_to == first.adapted_to  # each prompt's adapted weights, exactly: sampling depends on the prompt only
    again = second.run(examples[::-1], score_qa)
    answers = {r["id"]: r["output"] for r in forward}
    assert {r["id"]: r["output"] for r in again} == answers
    assert [eval_tokenizer.decode(permuted[order.index(i)]) for i in range(len(prompts))] == [r["output"] for r in forward]
    plain = {r["id"]: r["output"] for r in trainer(model, eval_tokenizer, lr=1e-9, steps=1).run(examples, score_qa)}
    assert plain != answers  # adaptation (at this learning rate) does change what the model answers
    assert all(r["ttt_seconds"] > 0 and r["ttt_skipped_updates"] == 0 for r in forward)


def test_accumulating_mode_carries_weights_across_examples(eval_tokenizer, examples):
    model = tiny_model("delta_net")
    original = weights(model)
    ttt = trainer(model, eval_tokenizer, mode="accumulating", method="ntp", steps=1)
    ttt.run(examples[:3], score_qa)
    assert ttt.examples_adapted == 3
    assert ttt.optimizer.state_dict()["state"][0]["step"] == 3  # one update per example, never reset
    assert all(not torch.equal(p, original[n]) for n, p in model.named_parameters())


def test_only_parameters_matching_the_pattern_adapt(eval_tokenizer, examples):
    model = tiny_model("delta_net")
    original = weights(model)
    ttt = trainer(model, eval_tokenizer, params=[r"attn\.(q|k|v)_proj"], steps=1)
    assert ttt.adapted == [f"model.layers.{i}.attn.{x}_proj.weight" for i in range(2) for x in "qkv"]
    prompt = ttt.encode(examples[0])[0]
    ttt.adapt(torch.tensor([prompt]), ttt.example_random(prompt))
    for name, p in model.named_parameters():
        assert torch.equal(p, original[name]) != (name in ttt.adapted), name
    assert ttt.describe()["adapted_parameters"] == sum(p.numel() for n, p in model.named_parameters() if n in ttt.adapted)
    with pytest.raises(ConfigError, match="match no parameter"):
        trainer(model, eval_tokenizer, params=["no_such_layer"])
    with pytest.raises(ConfigError, match="invalid regular expression"):
        trainer(model, eval_tokenizer, params=["attn.(q"])


def test_refine_on_a_prompt_too_short_is_refused(eval_tokenizer):
    ttt = trainer(tiny_model("delta_net"), eval_tokenizer)
    with pytest.raises(ConfigError, match="at least 12 tokens"):
        ttt.adapt(torch.tensor([[5] * 10]), torch.Generator())


def test_eval_cli_with_ttt_reports_costs_and_never_reuses_plain_answers(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    args = ["eval", "--model", str(tiny_model_dir), "--tasks", "synthetic_qa", "--lengths", "240", "--limit", "2"]
    args += ["--qa-max-new-tokens", "4", "--output-dir", str(out), "--progress", "false"]
    assert main([*args, "--ttt", "refine", "--ttt-steps", "1", "--ttt-lr", "1e-3", "--ttt-refine.margin", "8"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert (
        report["ttt"]["method"] == "refine" and report["ttt"]["refine"]["reward"] == "exact"
    )  # the test-time default, ALGORITHM.md §2.8
    assert report["ttt"]["refine"]["lambda_rl"] == 0.4
    cost = report["results"]["synthetic_qa"]["ttt"]
    assert cost["examples"] == 2 and cost["seconds_per_example"] > 0 and cost["peak_bytes_max"] > 0
    assert cost["memory_examples"] == 1 and cost["timed_examples"] == 1  # CPU: memory of every 10th example, from the first
    assert "Test-time training: refine" in (out / "results.md").read_text()
    plain = EvalConfig(model=str(tiny_model_dir), tasks=["synthetic_qa"])
    assert fingerprint(plain) != fingerprint(EvalConfig(model=str(tiny_model_dir), tasks=["synthetic_qa"], ttt="ntp"))
    assert main(args) == 0  # the same output directory without TTT: answers are recomputed, not taken from the cache
    assert "ttt" not in json.loads((out / "results.json").read_text())["results"]["synthetic_qa"]
