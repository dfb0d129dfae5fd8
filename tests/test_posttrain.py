"""Post-training (``refine-lm train --phase post``): answer-SFT masking, an inner step blind to the answers,
logging / resume as mid-training, and a tiny model that learns generated QA."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from refine_lm.cli import main
from refine_lm.config import ConfigError, load_config
from refine_lm.data import PreparedCorpus
from refine_lm.models.registry import build_model, load_model
from refine_lm.ops.lm_head import IGNORE_INDEX
from refine_lm.refine.objective import RefineConfig
from refine_lm.step_random import StepRandom
from refine_lm.train.checkpoint import list_checkpoints, load_trainer_state
from refine_lm.train.metrics import read_metrics
from refine_lm.train.midtrain import TrainConfig, run_training
from refine_lm.train.nested import NestedObjective, QABatch, answer_sft_inputs
from refine_lm.train.posttrain import QATrainingData

from .conftest import random_ids, tiny_model

INNER_REFINE = RefineConfig(num_chunks=2, rollout_len=3, margin=4)


def hand_built_batch() -> QABatch:
    """Two examples of different prompt and answer lengths."""
    ids = random_ids(1, 40, seed=3)[0]
    return QABatch([ids[:9], ids[10:23]], [ids[30:33], ids[35:37]])


def test_answer_sft_labels_are_the_answer_tokens_only():
    batch = hand_built_batch()
    ids, mask, labels = answer_sft_inputs(batch, pad_id=0)
    assert ids.shape == (2, 15) and mask.sum(1).tolist() == [12, 15]
    expected = torch.full((2, 15), IGNORE_INDEX)
    expected[0, 9:12] = batch.answers[0]
    expected[1, 13:15] = batch.answers[1]
    assert torch.equal(labels, expected)
    assert torch.equal(ids[0, :12], torch.cat([batch.prompts[0], batch.answers[0]]))


@pytest.mark.parametrize("micro_batch_size", [1, 2])
def test_answer_sft_loss_is_the_mean_nll_of_answer_tokens(micro_batch_size):
    """The objective's loss (padded micro-batches) equals cross-entropy on the answer tokens computed by hand."""
    model = tiny_model("delta_net")
    batch = hand_built_batch()
    objective = NestedObjective("answer-sft", RefineConfig(), micro_batch_size)
    updates = list(objective.updates(model, batch, StepRandom(0, 0)))
    assert objective.updates_per_step == len(updates) == 1  # no inner step
    loss = sum(objective.loss(model, micro)[0] for micro in updates[0])

    nll, count = 0.0, 0
    for prompt, answer in zip(batch.prompts, batch.answers):
        with torch.no_grad():
            logits = model(torch.cat([prompt, answer])[None]).logits[0].double()
        logprobs = torch.log_softmax(logits, -1)
        for j, token in enumerate(answer):  # answer token j is predicted at the position before it
            nll -= float(logprobs[len(prompt) - 1 + j, token])
            count += 1
    assert float(loss.detach()) == pytest.approx(nll / count, abs=1e-10)


@pytest.mark.parametrize("method", ["refine", "nested-sft"])
def test_the_inner_step_never_sees_the_answer(method):
    """The inner updates depend on the prompts only: other answers (other tokens, other lengths) give
    bit-identical weights, and no sequence the model reads is longer than the longest prompt."""
    prompts = [random_ids(1, 30, seed=1)[0], random_ids(1, 41, seed=2)[0]]

    def inner_weights(answers):
        model = tiny_model("delta_net")
        widths = []
        forward = model.forward

        def spy(input_ids, *args, **kwargs):
            widths.append(input_ids.shape[1])
            return forward(input_ids, *args, **kwargs)

        model.forward = spy
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        objective = NestedObjective(method, INNER_REFINE, micro_batch_size=2)
        for micro_batches in objective.inner_updates(model, QABatch(prompts, answers), StepRandom(0, 0)):
            optimizer.zero_grad()
            sum(objective.loss(model, m)[0] for m in micro_batches).backward()
            optimizer.step()
        assert widths and max(widths) <= max(len(p) for p in prompts)
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    a = inner_weights([random_ids(1, 4, seed=5)[0], random_ids(1, 2, seed=6)[0]])
    b = inner_weights([random_ids(1, 9, seed=7)[0], random_ids(1, 1, seed=8)[0]])
    start = tiny_model("delta_net").state_dict()
    assert any(not torch.equal(a[n], start[n]) for n in a)  # the inner step did update the model
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_refine_rollouts_start_inside_each_prompt():
    model = tiny_model("delta_net")
    prompts = [random_ids(1, 24, seed=1)[0], random_ids(1, 60, seed=2)[0]]
    objective = NestedObjective("refine", INNER_REFINE, micro_batch_size=2)
    updates = list(objective.inner_updates(model, QABatch(prompts, [prompts[0][:2]] * 2), StepRandom(0, 0)))
    assert len(updates) == 1 and len(updates[0]) == 2  # one update, one micro-batch per prompt
    for micro, prompt in zip(updates[0], prompts):
        r = micro.rollouts
        assert torch.equal(r.ids[0], prompt)
        assert bool((r.starts >= INNER_REFINE.margin).all()) and bool((r.starts + 3 <= len(prompt)).all())
        assert micro.ntp_tokens == 23 + 59 and micro.rollout_tokens == 2 * 2 * 3


@pytest.fixture(scope="module")
def qa_base(tiny_corpus, tmp_path_factory):
    """A tiny untrained DeltaNet with the tiny corpus's tokenizer (vocab 512)."""
    path = tmp_path_factory.mktemp("qa-base")
    build_model("delta_net", "tiny", seed=0).save_pretrained(path)
    PreparedCorpus(tiny_corpus).tokenizer().save_pretrained(path)
    return path


def post_args(qa_base, tiny_corpus, out, method, *extra):
    """Settings of a small post-training run on generated QA (texts of ~192 tokens, 2 facts, values from a pool of 2)."""
    return [
        "phase=post", f"method={method}", f"model={qa_base}", f"data.corpus={tiny_corpus}", "qa.generate.lengths=[192]",
        "qa.generate.facts=2", "qa.generate.value_pool=2", "qa.max_new_tokens=6", "loop.batch_size=2",
        "refine.num_chunks=2", "refine.margin=8", "optim.lr=3e-3", f"output_dir={out}", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("method", ["refine", "nested-sft", "answer-sft"])
def test_post_training_logs_and_validates(qa_base, tiny_corpus, tmp_path, method):
    out = tmp_path / method
    assert main(["train", *post_args(qa_base, tiny_corpus, out, method, "loop.steps=2", "qa.validation_examples=3")]) == 0
    records = read_metrics(out / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    assert len(train) == 2 and {"answer_loss", "loss", "grad_norm", "compute_tokens", "prompt_tokens"} <= set(train[0])
    assert ("ntp_loss" in train[0]) == (method != "answer-sft")
    assert ("reward_hybrid_mean" in train[0] and "pg_loss" in train[0]) == (method == "refine")
    validation = [r for r in records if r["split"] == "validation"]
    assert {"answer_loss", "qa_acc"} <= set(validation[-1])
    state = load_trainer_state(list_checkpoints(out)[-1])
    assert state["config"]["refine"]["reward"] == "hybrid"  # the post-training default (ALGORITHM.md §2.8)


def test_post_training_from_a_ruler_qa_file(qa_base, tiny_corpus, tmp_path):
    """``qa.files``: examples are rows of RULER-QA-format files (here written by ``refine-lm data qa``), by step."""
    rows = tmp_path / "train.parquet"
    assert (
        main(
            [
                "data",
                "qa",
                f"corpus={tiny_corpus}",
                "split=train",
                "examples=6",
                "qa.lengths=[192]",
                "qa.facts=2",
                f"output={rows}",
            ]
        )
        == 0
    )
    args = post_args(qa_base, tiny_corpus, tmp_path / "run", "nested-sft", "loop.steps=2", f"qa.files=[{rows}]")
    assert main(["train", *args, "qa.validation_examples=0"]) == 0
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert len(train) == 2 and train[0]["prompt_tokens"] <= 192


def test_post_training_resumes_to_identical_weights(qa_base, tiny_corpus, tmp_path):
    common = ("qa.validation_examples=0", "refine.ppo_epochs=2")
    assert main(["train", *post_args(qa_base, tiny_corpus, tmp_path / "straight", "refine", "loop.steps=3", *common)]) == 0
    assert main(["train", *post_args(qa_base, tiny_corpus, tmp_path / "stopped", "refine", "loop.steps=2", *common)]) == 0
    assert main(["train", *post_args(qa_base, tiny_corpus, tmp_path / "stopped", "refine", "loop.steps=3", *common)]) == 0
    a = load_file(list_checkpoints(tmp_path / "straight")[-1] / "model.safetensors")
    b = load_file(list_checkpoints(tmp_path / "stopped")[-1] / "model.safetensors")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_data_parallel_ranks_share_each_step_of_qa_examples(qa_base, tiny_corpus):
    cfg = load_config(TrainConfig, None, post_args(qa_base, tiny_corpus, "unused", "refine"))
    tokenizer = PreparedCorpus(tiny_corpus).tokenizer()
    whole = QATrainingData(cfg.qa, cfg.data.corpus, tokenizer, 4, 0, rank=0, world_size=1)
    shares = [QATrainingData(cfg.qa, cfg.data.corpus, tokenizer, 4, 0, rank=r, world_size=2) for r in (0, 1)]
    for step in (0, 5):
        assert shares[0].examples_at(step) + shares[1].examples_at(step) == whole.examples_at(step)
    with pytest.raises(ConfigError, match="does not split over 3 ranks"):
        QATrainingData(cfg.qa, cfg.data.corpus, tokenizer, 4, 0, rank=0, world_size=3)


def test_phase_and_method_must_match(qa_base, tiny_corpus, capsys):
    assert main(["train", "--phase", "mid", "--method", "answer-sft", f"model={qa_base}"]) == 2
    assert "not a mid-training method" in capsys.readouterr().err
    assert main(["train", "--phase", "post", "--method", "sft", f"model={qa_base}"]) == 2


def test_post_training_improves_held_out_qa_accuracy(qa_base, tiny_corpus, tmp_path):
    """Nested REFINE post-training of an untrained tiny model on generated QA (train-split texts) raises its
    accuracy on held-out QA (validation-split texts) from 0: it learns the answer format and vocabulary
    (values from a pool of 2) and starts to use the facts (seed fixed)."""
    overrides = ["loop.steps=20", "loop.batch_size=4", "qa.validation_examples=32", "loop.log_every=100"]
    cfg = load_config(TrainConfig, None, post_args(qa_base, tiny_corpus, tmp_path / "run", "refine", *overrides))
    tokenizer = PreparedCorpus(tiny_corpus).tokenizer()
    validate = QATrainingData(cfg.qa, cfg.data.corpus, tokenizer, 4, 0).validator()
    before = validate(load_model(qa_base).eval())
    after = run_training(cfg)
    assert before["qa_acc"] == 0.0
    assert after["qa_acc"] >= 0.15
    assert after["answer_loss"] < before["answer_loss"] - 2.0
