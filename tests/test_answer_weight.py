"""Answer-weighted next-token prediction: weights of 1 are plain NTP exactly; weights reach the answer tokens."""

from __future__ import annotations

import torch

from refine_lm.refine.ntp import NextTokenObjective, WeightedTokens
from refine_lm.step_random import StepRandom
from refine_lm.train.data import DataConfig, TrainingData

from .conftest import random_ids, tiny_model


def loss_and_grads(model, batch):
    objective = NextTokenObjective(micro_batch_size=2)
    model.zero_grad()
    total = 0.0
    for update in objective.updates(model, batch, StepRandom(0, 0)):
        for micro in update:
            loss, logs = objective.loss(model, micro)
            loss.backward()
            total += float(loss.detach())
    return total, [p.grad.clone() for p in model.parameters() if p.grad is not None], logs


def test_unit_weights_are_plain_next_token_prediction():
    model = tiny_model("delta_net").train()
    ids = random_ids(4, 40)
    plain, plain_grads, _ = loss_and_grads(model, ids)
    weighted, weighted_grads, logs = loss_and_grads(model, WeightedTokens(ids, torch.ones(ids.shape, dtype=torch.float64)))
    assert abs(plain - weighted) < 1e-10 and "ntp_loss" in logs
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(plain_grads, weighted_grads))


def test_weighted_loss_is_the_weighted_mean_of_token_losses():
    model = tiny_model("delta_net").train()
    ids = random_ids(2, 30)
    weights = torch.ones(ids.shape, dtype=torch.float64)
    weights[0, 10:14] = 8.0
    loss, _, _ = loss_and_grads(model, WeightedTokens(ids, weights))
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]
        nll = -logits.log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    expected = float((weights[:, 1:] * nll).sum() / weights[:, 1:].sum())
    assert abs(loss - expected) < 1e-8


def test_training_batches_weigh_the_answer_tokens(tiny_corpus):
    cfg = DataConfig(corpus=str(tiny_corpus), seq_len=512, answer_weight=5.0)
    data = TrainingData(cfg, batch_size=4, seed=0)
    for step in range(4):
        batch = data.batch_at(step)
        assert isinstance(batch, WeightedTokens)
        for row, i in enumerate(data.sampler.indices(step)):
            positions = data.train.answer_positions(int(i))
            heavy = torch.nonzero(batch.weights[row] == 5.0)[:, 0]
            assert heavy.tolist() == sorted(positions.tolist())
    assert not isinstance(TrainingData(DataConfig(corpus=str(tiny_corpus), seq_len=512), 4, 0).batch_at(0), WeightedTokens)
