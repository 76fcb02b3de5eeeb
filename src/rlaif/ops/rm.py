"""Reward-model math beside the Bradley-Terry loss (in losses.py): reward centering, pairwise statistics and
the linear learning-rate schedule of `rlaif rm`.

Shapes: b preference pairs; ``chosen`` and ``rejected`` are the ``(b,)`` scalar rewards of the two answers.
"""

from __future__ import annotations

import torch

__all__ = ["reward_centering_penalty", "pairwise_stats", "linear_with_floor_lr"]


def reward_centering_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Auxiliary loss that pulls the rewards of a pair towards a sum of 0 (Eisenstein et al. 2023, "Helping or
    Herding? Reward Model Ensembles Mitigate but do not Eliminate Reward Hacking", section 3).

    Shapes: ``chosen``, ``rejected`` ``(b,)`` -> 0-dim ``mean_i (chosen_i + rejected_i)^2``.

    The Bradley-Terry loss only sees ``chosen - rejected``, so a shift of every reward is free; this term
    removes that freedom (a trainer adds ``coef * penalty``; the paper uses coef 0.01). Nothing is detached.
    """
    return ((chosen + rejected) ** 2).mean()


@torch.no_grad()
def pairwise_stats(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Pairwise accuracy and reward scale of ``(b,)`` chosen / rejected rewards (b >= 1).

    ``accuracy`` = fraction of pairs with ``chosen > rejected`` (ties count as wrong);
    ``margin_mean`` = mean of ``chosen - rejected``; ``reward_mean`` / ``reward_std`` over all 2b rewards
    (std unbiased, 0 for a single reward); ``chosen_mean``, ``rejected_mean``. Plain floats.
    """
    c, r = chosen.detach().float(), rejected.detach().float()
    both = torch.cat([c, r])
    return {
        "accuracy": (c > r).float().mean().item(),
        "margin_mean": (c - r).mean().item(),
        "reward_mean": both.mean().item(),
        "reward_std": both.std().item() if both.numel() > 1 else 0.0,
        "chosen_mean": c.mean().item(),
        "rejected_mean": r.mean().item(),
    }


def linear_with_floor_lr(step: int, total_steps: int, peak_lr: float, floor_ratio: float = 0.0,
                         warmup_steps: int = 0) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total_steps``: linear warm-up, then a straight
    line from ``peak_lr`` down to ``floor = floor_ratio * peak_lr`` — the linear sibling of
    ``cosine_with_floor_lr`` (same warm-up, same progress, so the two schedules are interchangeable):

        step <  W:  lr = peak * (step + 1) / W            (the last warm-up step reaches the peak)
        step >= W:  p  = (step - W) / max(1, T - W - 1)   (0 on the first step after warm-up, 1 on the last)
                    lr = peak - (peak - floor) * min(p, 1)

    Steps past the end stay at the floor. With ``floor_ratio = 0`` the last step has learning rate 0.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    floor = floor_ratio * peak_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
    return peak_lr - (peak_lr - floor) * progress
