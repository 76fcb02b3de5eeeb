"""Generalised Advantage Estimation.

Reference: J. Schulman et al. (2016), "High-Dimensional Continuous Control Using Generalized Advantage
Estimation", eq. (16): ``A_t = sum_l (gamma * lam)^l delta_{t+l}``, ``delta_t = r_t + gamma V_{t+1} - V_t``.
"""

from __future__ import annotations

import torch

__all__ = ["gae"]


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation over response tokens.

    Shapes: ``rewards``, ``values``, ``mask`` ``(b, t)`` -> ``(advantages, returns)``, both ``(b, t)``.

    Layout: responses are LEFT-ALIGNED with trailing padding, i.e. the mask of each row is contiguous
    from position 0 (``1 1 1 0 0``). The step after the last response token is terminal (bootstrap value
    0), including for responses cut at the generation length limit.

    Recursion, backwards over ``t`` (``m`` = mask, ``V_t``/``r_t`` replaced by 0 outside the mask)::

        delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
        A_t     = (delta_t + gamma * lam * A_{t+1}) * m_t      (A_t = 0 past the end)
        returns = A + V   inside the mask, 0 outside

    Rewards and values outside the mask do not matter, even if NaN/inf (selected away with
    ``torch.where``). No whitening is done here. With a non-contiguous mask each masked-out gap acts as
    an episode boundary.

    Runs under ``torch.no_grad``: outputs are detached.
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, mask {tuple(mask.shape)} "
            "must all be (b, t)"
        )
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    m = mask.bool()
    zero = torch.zeros((), dtype=dtype, device=rewards.device)
    r = torch.where(m, rewards.to(dtype), zero)
    v = torch.where(m, values.to(dtype), zero)  # so V_{t+1} * m_{t+1} == v[:, t+1]
    b, t = r.shape
    advantages = torch.zeros_like(r)
    next_value = torch.zeros(b, dtype=dtype, device=r.device)
    next_adv = torch.zeros(b, dtype=dtype, device=r.device)
    for i in range(t - 1, -1, -1):
        delta = r[:, i] + gamma * next_value - v[:, i]
        next_adv = torch.where(m[:, i], delta + gamma * lam * next_adv, zero)
        advantages[:, i] = next_adv
        next_value = v[:, i]
    returns = torch.where(m, advantages + v, zero)
    return advantages, returns
