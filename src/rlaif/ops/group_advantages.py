"""Critic-free advantages from a group of G sampled answers per prompt: GRPO's group-normalised reward and
RLOO's leave-one-out baseline.

Layout: ``rewards`` is ``(b,)`` with ``b = n_groups * G``; the G rows of one prompt are contiguous
(``rewards.view(n_groups, G)`` gives one group per row). The result is one scalar advantage per answer, which
a trainer broadcasts over the answer's tokens.
"""

from __future__ import annotations

import torch

__all__ = ["group_advantages", "rloo_advantages", "centre_within_groups"]


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(b,)`` -> ``(n_groups, G)`` float view, after checking the layout."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (b,), got {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards cannot be cut into groups of {group_size}")
    r = rewards if rewards.is_floating_point() else rewards.float()
    return r.reshape(-1, group_size)


@torch.no_grad()
def group_advantages(
    rewards: torch.Tensor, group_size: int, normalise_std: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantages (Shao et al. 2024, "DeepSeekMath", section 4.1.2, outcome supervision).

    Shapes: ``rewards`` ``(b,)``, ``b = n_groups * group_size``, groups contiguous -> ``(b,)``.

    Formula, per group g of G rewards::

        A_i = (r_i - mean_g)  / (std_g + eps)     normalise_std=True
        A_i =  r_i - mean_g                       normalise_std=False  (Dr. GRPO, Liu et al. 2025)

    ``std_g`` is the unbiased (n - 1) standard deviation, as in TRL's GRPOTrainer; a group of one answer has
    ``std = 0`` (no NaN) and advantage 0. A group whose rewards are all equal carries no signal: its
    advantages are exactly 0 (never NaN, also with ``eps = 0``).

    Runs under ``torch.no_grad``: the output is detached. Float rewards keep their dtype; integers become
    float32.
    """
    r = _grouped(rewards, group_size)  # (n_groups, G)
    centred = r - r.mean(dim=1, keepdim=True)
    if not normalise_std:
        return centred.reshape(-1)
    std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])  # (n_groups, 1)
    denom = std + eps
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    adv = torch.where(denom > 0, centred / safe, torch.zeros_like(centred))
    return adv.reshape(-1)


@torch.no_grad()
def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!";
    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs").

    Shapes: ``rewards`` ``(b,)``, ``b = n_groups * group_size``, groups contiguous -> ``(b,)``.

    Formula, per group of G rewards: ``A_i = r_i - (sum_g - r_i) / (G - 1)``, i.e. the reward minus the mean
    of the OTHER G - 1 answers (an unbiased baseline: it does not depend on answer i). Equivalently
    ``A_i = G / (G - 1) * (r_i - mean_g)``. Needs ``G >= 2`` (ValueError otherwise: one answer has no others).
    Equal rewards in a group give 0.

    Runs under ``torch.no_grad``: the output is detached.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs at least 2 answers per prompt (group_size={group_size})")
    r = _grouped(rewards, group_size)  # (n_groups, G)
    others_mean = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)
    return (r - others_mean).reshape(-1)


@torch.no_grad()
def centre_within_groups(scores: torch.Tensor, group_size: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Each answer's score minus the mean score of its group's *valid* answers (PPO's `score_baseline:
    prompt_mean`: which answer to a question is better, not which question scores high).

    Shapes: ``scores`` ``(b,)``, ``valid`` ``(b,)`` bool or None (all valid), ``b = n_groups * group_size``,
    groups contiguous -> ``(b,)``.

    Formula, per group g with valid set V_g::

        c_i = s_i - (sum_{j in V_g} s_j) / |V_g|      for i in V_g
        c_i = 0                                       for i not in V_g (a row that enters no loss)

    A group with no valid answer is all 0. Rows left out (e.g. answers without EOS under ``missing_eos: drop``)
    never move the baseline of the others: scores [1.0 valid, 5.0 dropped] give [0.0, 0.0], not [-2.0, 2.0].

    Runs under ``torch.no_grad``: the output is detached.
    """
    s = _grouped(scores, group_size)  # (n_groups, G)
    v = torch.ones_like(s, dtype=torch.bool) if valid is None else valid.reshape(s.shape).bool()
    n = v.sum(dim=1, keepdim=True)  # (n_groups, 1)
    mean = torch.where(v, s, torch.zeros_like(s)).sum(dim=1, keepdim=True) / n.clamp(min=1)
    return torch.where(v, s - mean, torch.zeros_like(s)).reshape(-1)
