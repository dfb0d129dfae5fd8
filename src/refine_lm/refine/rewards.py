"""Self-supervised rewards for a rollout against the true continuation (ALGORITHM.md §2.6), and the interface
for plugging in your own.

A reward function takes a :class:`RewardInputs` (tensors only: ids, final hidden states, log-probs,
and the LM head for logits on demand) and returns one scalar per rollout, ``[R]``. Built-ins are
referred to by name (``cosine``, ``exact``, ``hybrid``); your own by import path
(``"my_package.rewards:EncoderReward"``): a function, or a class / factory called once with
``reward_kwargs`` to build one (e.g. to load a frozen external encoder).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops.dtypes import upcast


@dataclass
class RewardInputs:
    """Everything a reward may look at, for R rollouts of k tokens.

    rollout_ids / target_ids: ``[R, k]`` sampled tokens and the document's true next tokens.
    rollout_hidden / target_hidden: ``[R, k, D]`` final hidden state after reading rollout token j /
        true token j (ALGORITHM.md §2.5), from the model that sampled.
    rollout_logprobs: ``[R, k]`` the sampling policy's log-probabilities of the rollout tokens.
    lm_head: ``[V, D]`` output embedding, so ``logits()`` can be formed when a reward needs them.
    """

    rollout_ids: Tensor
    target_ids: Tensor
    rollout_hidden: Tensor
    target_hidden: Tensor
    rollout_logprobs: Tensor
    lm_head: Tensor

    def logits(self) -> tuple[Tensor, Tensor]:
        """``([R, k, V], [R, k, V])``: next-token logits after each rollout / true token."""
        return upcast(self.rollout_hidden @ self.lm_head.T), upcast(self.target_hidden @ self.lm_head.T)


RewardFn = Callable[[RewardInputs], Tensor]


def cosine_reward(inputs: RewardInputs) -> Tensor:
    """``mean_j cos(h_roll[j], H[s + j])``, in [-1, 1]: did the rollout leave the model in the state the truth does?"""
    return F.cosine_similarity(upcast(inputs.rollout_hidden), upcast(inputs.target_hidden), dim=-1).mean(-1)


def exact_reward(inputs: RewardInputs) -> Tensor:
    """``mean_j [y_j == x[s + j]]``, in [0, 1] (the paper's "binary" reward)."""
    return (inputs.rollout_ids == inputs.target_ids).to(upcast(inputs.rollout_hidden).dtype).mean(-1)


def hybrid_reward(inputs: RewardInputs) -> Tensor:
    """``cosine + exact``, in [-1, 2]."""
    return cosine_reward(inputs) + exact_reward(inputs)


REWARDS: dict[str, RewardFn] = {"cosine": cosine_reward, "exact": exact_reward, "hybrid": hybrid_reward}


def resolve_reward(name: str, kwargs: dict[str, Any] | None = None) -> RewardFn:
    """A built-in reward by name, or ``"module.path:attribute"`` (called with ``kwargs`` if they are given
    or the attribute is a class)."""
    if name in REWARDS:
        if kwargs:
            raise ValueError(f"reward {name!r} takes no reward_kwargs, got {sorted(kwargs)}")
        return REWARDS[name]
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"unknown reward {name!r}: use one of {', '.join(REWARDS)} or 'module.path:callable'")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import reward {name!r}: {e}") from None
    if kwargs or isinstance(target, type):
        target = target(**(kwargs or {}))
    if not callable(target):
        raise ValueError(f"reward {name!r} is not callable")
    return target


@torch.no_grad()
def reward_report(inputs: RewardInputs) -> dict[str, float]:
    """Mean and std of the three built-in rewards, whichever one is trained on (for the logs)."""
    report = {}
    for name, fn in REWARDS.items():
        values = fn(inputs).float()
        report[f"reward_{name}_mean"] = float(values.mean())
        report[f"reward_{name}_std"] = float(values.std(unbiased=False))
    return report
