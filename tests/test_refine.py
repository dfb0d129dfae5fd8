"""REFINE's components: selection, rewards, advantages, the clipped loss, and cached rollouts == re-prefill."""

from __future__ import annotations

import math

import pytest
import torch

from refine_lm.refine.grpo import clipped_policy_loss, grpo_advantages, k3_kl
from refine_lm.refine.objective import RefineConfig, RefineMicroBatch, RefineObjective
from refine_lm.refine.rewards import RewardInputs, cosine_reward, exact_reward, hybrid_reward, resolve_reward
from refine_lm.refine.selection import select_positions, smooth_entropy, smoothing_window
from refine_lm.step_random import StepRandom

from .conftest import ARCHS, random_ids, tiny_model

# ----- selection ------------------------------------------------------------------------------


def test_smoothing_window_and_zero_padding():
    assert [smoothing_window(k) for k in (1, 2, 3, 4, 5)] == [1, 3, 3, 5, 5]
    e = torch.tensor([[3.0, 0.0, 0.0, 6.0]])
    # window 3, zero padding counted: [(0+3+0)/3, (3+0+0)/3, (0+0+6)/3, (0+6+0)/3]
    assert torch.allclose(smooth_entropy(e, 3), torch.tensor([[1.0, 1.0, 2.0, 2.0]]))
    assert torch.equal(smooth_entropy(e, 1), e)


def test_one_position_per_chunk_with_margins():
    g = torch.Generator().manual_seed(0)
    entropy = torch.rand(5, 103, generator=g)
    starts = select_positions(entropy, num_chunks=4, rollout_len=5, mode="uniform", margin=0, generator=g)
    chunk = 103 // 4
    for j in range(4):  # s = t + 1 with t inside chunk j; the remainder (last 3 tokens) is never drawn
        assert ((starts[:, j] >= j * chunk + 1) & (starts[:, j] <= (j + 1) * chunk)).all()
    clamped = select_positions(entropy, num_chunks=4, rollout_len=5, mode="uniform", margin=20, generator=g)
    assert (clamped >= 20).all() and (clamped <= 103 - 20).all()
    tight = select_positions(torch.rand(2, 12), num_chunks=2, rollout_len=5, mode="argmax", margin=0)
    assert (tight + 5 <= 12).all()  # the k ground-truth tokens always exist
    with pytest.raises(ValueError, match="too short"):
        select_positions(torch.rand(1, 30), num_chunks=2, rollout_len=5, margin=20)


def test_argmax_argmin_and_entropy_preference():
    L, c = 400, 4
    entropy = torch.zeros(1, L)
    entropy[0, 50:53] = 5.0  # chunk 0 has a clearly uncertain stretch
    entropy[0, 160] = -1.0  # chunk 1 has a clearly certain token
    argmax = select_positions(entropy, num_chunks=c, rollout_len=3, mode="argmax", margin=0)
    assert argmax[0, 0] - 1 == 51  # centre of the smoothed peak
    argmin = select_positions(entropy, num_chunks=c, rollout_len=1, mode="argmin", margin=0)
    assert argmin[0, 1] - 1 == 160
    # entropy mode: statistical preference (fixed seed): the smoothed peak (5 of 100 positions) holds
    # ~69% of the softmax mass, versus a 5% share under uniform sampling
    g = torch.Generator().manual_seed(0)
    draws = select_positions(entropy.expand(2000, L), num_chunks=c, rollout_len=3, mode="entropy", margin=0, generator=g)
    in_peak = ((draws[:, 0] - 1 >= 49) & (draws[:, 0] - 1 <= 53)).float().mean()
    uniform = select_positions(entropy.expand(2000, L), num_chunks=c, rollout_len=3, mode="uniform", margin=0, generator=g)
    in_peak_uniform = ((uniform[:, 0] - 1 >= 49) & (uniform[:, 0] - 1 <= 53)).float().mean()
    expected = torch.softmax(smooth_entropy(entropy, 3)[0, :100], 0)[49:54].sum()
    assert abs(in_peak - expected) < 0.04 and expected > 0.6
    assert in_peak_uniform < 0.1


# ----- rewards ----------------------------------------------------------------------------------


def reward_inputs():
    rollout_hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]])
    target_hidden = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]]])
    return RewardInputs(
        rollout_ids=torch.tensor([[1, 2], [3, 4]]),
        target_ids=torch.tensor([[1, 5], [3, 4]]),
        rollout_hidden=rollout_hidden,
        target_hidden=target_hidden,
        rollout_logprobs=torch.zeros(2, 2),
        lm_head=torch.eye(2),
    )


def test_rewards_on_hand_computed_cases():
    inputs = reward_inputs()
    # row 0: cos = (1 + 0) / 2, exact = 1/2 ; row 1: cos = (1 + -1) / 2, exact = 1
    assert torch.allclose(cosine_reward(inputs), torch.tensor([0.5, 0.0]), atol=1e-6)
    assert torch.allclose(exact_reward(inputs), torch.tensor([0.5, 1.0]))
    assert torch.allclose(hybrid_reward(inputs), torch.tensor([1.0, 1.0]), atol=1e-6)
    rollout_logits, target_logits = inputs.logits()
    assert torch.allclose(rollout_logits, inputs.rollout_hidden) and torch.allclose(target_logits, inputs.target_hidden)


class ConstantReward:
    def __init__(self, value: float):
        self.value = value

    def __call__(self, inputs: RewardInputs) -> torch.Tensor:
        return torch.full((inputs.rollout_ids.shape[0],), self.value)


def test_custom_rewards_by_import_path():
    fn = resolve_reward(f"{__name__}:ConstantReward", {"value": 0.25})
    assert torch.equal(fn(reward_inputs()), torch.tensor([0.25, 0.25]))
    assert resolve_reward(f"{__name__}:cosine_reward") is cosine_reward
    with pytest.raises(ValueError, match="unknown reward"):
        resolve_reward("cosinus")
    with pytest.raises(ValueError, match="cannot import reward"):
        resolve_reward("no.such.module:f")


# ----- advantages and loss ----------------------------------------------------------------------


def test_grpo_advantages_hand_computed():
    r = torch.tensor([[[1.0], [2.0], [3.0]], [[0.0], [0.0], [6.0]]])  # B=2, c=3, n=1
    a = grpo_advantages(r)  # by sequence; unbiased std: 1.0 and sqrt(12)
    expected = torch.tensor([[-1.0, 0.0, 1.0], [-2 / math.sqrt(12), -2 / math.sqrt(12), 4 / math.sqrt(12)]])
    assert torch.allclose(a[..., 0], expected, atol=1e-5)
    assert torch.allclose(grpo_advantages(r, scale_std=False)[..., 0], torch.tensor([[-1.0, 0.0, 1.0], [-2.0, -2.0, 4.0]]))
    per_position = grpo_advantages(torch.tensor([[[1.0, 3.0], [5.0, 5.0]]]))  # n=2 -> by position
    assert torch.allclose(per_position, torch.tensor([[[-1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, 0.0]]]), atol=1e-5)
    assert torch.equal(grpo_advantages(torch.tensor([[[7.0]]])), torch.zeros(1, 1, 1))  # a group of one


def test_clipped_loss_and_dual_clip_hand_computed():
    old = torch.zeros(4, 1)
    new = torch.log(torch.tensor([[1.5], [0.5], [1.1], [5.0]]))  # ratios 1.5, 0.5, 1.1, 5.0
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, flags = clipped_policy_loss(new, old, adv, clip_eps=0.2, dual_clip=3.0)
    # A>0, r=1.5: -min(1.5, 1.2) = -1.2 (clipped); A>0, r=0.5: -min(0.5, 0.8) = -0.5
    # A<0, r=1.1: max(1.1, 1.1) = 1.1; A<0, r=5: max(5, 1.2) = 5 -> dual clip at 3
    assert torch.allclose(loss[:, 0], torch.tensor([-1.2, -0.5, 1.1, 3.0]))
    assert flags["clip"][:, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert flags["dual_clip"][:, 0].tolist() == [0.0, 0.0, 0.0, 1.0]
    no_dual, _ = clipped_policy_loss(new, old, adv, clip_eps=0.2, dual_clip=None)
    assert float(no_dual[3, 0]) == pytest.approx(5.0)
    assert torch.allclose(k3_kl(torch.zeros(1), torch.log(torch.tensor([2.0]))), torch.tensor([2 - math.log(2) - 1]))


# ----- cached-state rollouts == the re-prefill oracle ----------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_rollouts_equal_reprefill(arch):
    model = tiny_model(arch)  # float64
    ids = random_ids(2, 48)
    cfg = dict(num_chunks=3, rollout_len=4, rollouts_per_position=2, margin=3, snapshot_stride=5, reward="hybrid")
    cached = RefineObjective(RefineConfig(**cfg, rollout_mode="cached"), micro_batch_size=2)
    oracle = RefineObjective(RefineConfig(**cfg, rollout_mode="reprefill"), micro_batch_size=2)
    # 12 rollouts read 5, 5 and 2 at a time, activations recomputed in the backward pass
    grouped = RefineObjective(RefineConfig(**cfg, rollout_mode="reprefill", reprefill_rows_per_pass=5), micro_batch_size=2)
    a = cached.rollout(model, ids, StepRandom(1, 0))
    b = oracle.rollout(model, ids, StepRandom(1, 0))
    assert torch.equal(a.starts, b.starts) and torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.old_logprobs, b.old_logprobs, atol=1e-10, rtol=0)
    assert torch.allclose(a.advantages, b.advantages, atol=1e-8, rtol=0)
    for key in ("reward_cosine_mean", "reward_exact_mean", "reward_hybrid_mean"):
        assert cached.step_metrics()[key] == pytest.approx(oracle.step_metrics()[key], abs=1e-10)

    grads = []
    c = grouped.rollout(model, ids, StepRandom(1, 0))
    assert torch.equal(a.tokens, c.tokens)
    assert torch.allclose(a.old_logprobs, c.old_logprobs, atol=1e-10, rtol=0)
    for objective in (cached, oracle, grouped):
        model.zero_grad()
        micro = RefineMicroBatch(a, ntp_tokens=2 * 47, rollout_tokens=a.tokens.numel())
        loss, _ = objective.loss(model, micro)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-10, rtol=1e-8), name
        assert torch.allclose(grads[0][name], grads[2][name], atol=1e-10, rtol=1e-8), name
