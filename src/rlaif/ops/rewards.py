"""Per-token PPO rewards: sequence score at the last response token minus a KL penalty.

Reference: Ziegler et al. (2019) "Fine-Tuning Language Models from Human Preferences", eq. (2);
Stiennon et al. (2020) "Learning to summarize from human feedback": ``R = r(x, y) - beta * KL``, with the
KL term applied per token and the score added at the final token.
"""

from __future__ import annotations

import torch

from .kl import kl as kl_estimate

__all__ = ["last_valid_index", "shaped_rewards"]


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last set position of each row.

    Shapes: ``mask`` ``(b, t)`` bool or 0/1 -> ``(b,)`` long; ``-1`` for a row with no set position.
    Works for any mask (not only contiguous ones). Detaches nothing (the output is an integer index).
    """
    b, t = mask.shape
    if t == 0:
        return torch.full((b,), -1, dtype=torch.long, device=mask.device)
    positions = torch.arange(t, device=mask.device).expand(b, t)
    minus_one = torch.full_like(positions, -1)
    return torch.where(mask.bool(), positions, minus_one).max(dim=-1).values


@torch.no_grad()
def shaped_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shaped per-token rewards for PPO.

    Shapes: ``scores`` ``(b,)``; ``logprobs``, ``ref_logprobs``, ``mask`` ``(b, t)`` -> ``(rewards, kl)``,
    both ``(b, t)`` in the dtype of ``logprobs``.

    Formula: ``kl_t = kl(logprobs, ref_logprobs, estimator)_t`` inside the mask, 0 outside;
    ``rewards_t = -kl_coef * kl_t + scores * [t == last_valid_index(mask)]``. Rows with an empty mask get
    no score (all zeros). Both outputs are exactly 0 outside the mask (NaN/garbage there does not leak).

    Inputs are data: callers should pass detached tensors; the function runs under ``torch.no_grad`` so
    its outputs never carry a graph.
    """
    m = mask.bool()
    per_token = kl_estimate(logprobs, ref_logprobs, estimator)
    zero = torch.zeros((), dtype=per_token.dtype, device=per_token.device)
    kl_t = torch.where(m, per_token, zero)
    rewards = -kl_coef * kl_t
    last = last_valid_index(m)
    positions = torch.arange(m.shape[-1], device=m.device)
    at_last = positions.unsqueeze(0) == last.unsqueeze(1)  # never true for last == -1
    rewards = rewards + torch.where(at_last, scores.to(rewards.dtype).unsqueeze(1), zero)
    rewards = torch.where(m, rewards, zero)
    return rewards, kl_t
