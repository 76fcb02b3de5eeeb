"""PPO policy/value losses and the Bradley-Terry reward-model loss.

Token normalisation (``normalizer``): by default a loss is ``sum over masked tokens / number of masked
tokens`` of the tensors passed in. When one optimiser step is split over several micro-batches (gradient
accumulation) or data-parallel ranks, per-chunk token means weight tokens unequally whenever the chunks
hold different token counts. Passing ``normalizer = total number of masked tokens of the whole batch``
to every chunk and SUMMING the chunk losses gives exactly the loss (and gradient) of one big batch.
With DDP, which AVERAGES gradients over ``world_size`` ranks, pass
``normalizer = global_token_count / world_size`` (equivalently multiply the loss by ``world_size``).
Statistics always use the plain masked mean of the chunk, never the normalizer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masking import masked_mean, masked_sum

__all__ = ["ppo_policy_loss", "ppo_value_loss", "bradley_terry_loss"]


def _normalise(
    total: torch.Tensor, mask: torch.Tensor, normalizer: float | torch.Tensor | None
) -> torch.Tensor:
    """``total / denom`` with ``denom = sum(mask)`` (or ``normalizer``); an empty denominator gives 0."""
    if normalizer is None:
        denom = mask.to(total.dtype).sum()
    else:
        denom = torch.as_tensor(normalizer, dtype=total.dtype, device=total.device)
    safe = torch.where(denom != 0, denom, torch.ones_like(denom))
    return torch.where(denom != 0, total / safe, torch.zeros_like(total))


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate PPO policy loss (Schulman et al. 2017, "Proximal Policy Optimization", eq. 7).

    Shapes: ``logprobs``, ``old_logprobs``, ``advantages``, ``mask`` ``(b, t)`` -> ``(loss, stats)``
    with ``loss`` 0-dim.

    Formula: ``ratio = exp(logprobs - old_logprobs)``; ``pg1 = -A * ratio``;
    ``pg2 = -A * clip(ratio, 1 - eps, 1 + eps)``; per token ``max(pg1, pg2)``;
    ``loss = sum_masked(max(pg1, pg2)) / (sum(mask) if normalizer is None else normalizer)``
    (see the module docstring for ``normalizer`` and gradient accumulation / data parallelism).
    Tokens where the clipped branch is active (``A > 0, ratio > 1 + eps`` or ``A < 0, ratio < 1 - eps``)
    get zero gradient.

    stats (detached 0-dim tensors, plain masked means): ``clipfrac`` = mean of ``pg2 > pg1``;
    ``approx_kl`` = mean of ``0.5 * (logprobs - old_logprobs)^2``; ``ratio_mean``; ``ratio_max``; ``ratio_dev_max`` =
    max of ``|ratio - 1|`` over real tokens
    (0 for an empty mask).

    Detaches ``old_logprobs`` and ``advantages`` (they are targets); gradient flows to ``logprobs`` only.
    Values outside the mask are ignored, even NaN/inf (also in the backward pass).
    """
    m = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    log_ratio = torch.where(m, logprobs - old_logprobs.detach(), zero)
    adv = torch.where(m, advantages.detach().to(logprobs.dtype), zero)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_token = torch.maximum(pg1, pg2)
    loss = _normalise(masked_sum(per_token, mask), mask, normalizer)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg2 > pg1).to(logprobs.dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(m, ratio, zero).max() if ratio.numel() else zero.clone(),
            "ratio_dev_max": torch.where(m, (ratio - 1.0).abs(), zero).max() if ratio.numel() else zero.clone(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None,
    normalizer: float | torch.Tensor | None = None,
    return_std: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO value loss (as in OpenAI baselines ``ppo2`` / Ziegler et al. 2019 ``lm-human-preferences``).

    Shapes: ``values``, ``old_values``, ``returns``, ``mask`` ``(b, t)`` -> ``(loss, stats)``, ``loss``
    0-dim.

    Formula: ``V_clip = clip(V, V_old - eps, V_old + eps)``; ``e1 = (V - R) / s``; ``e2 = (V_clip - R) / s``
    with ``s = return_std`` (or 1 when ``return_std`` is None: the sigma-normalised variant divides both
    errors by the return standard deviation before squaring);
    ``loss = 0.5 * sum_masked(max(e1^2, e2^2)) / (sum(mask) if normalizer is None else normalizer)``.
    ``clip_eps=None`` disables clipping: ``0.5 * e1^2``. ``normalizer`` as in ``ppo_policy_loss``.

    stats (detached 0-dim, plain masked means): ``vf_clipfrac`` = mean of ``e2^2 > e1^2`` (0 when
    unclipped); ``value_mean`` = mean of ``V``; ``value_error`` = mean of ``(V - R)^2`` (not divided by
    ``return_std``).

    Detaches ``old_values``, ``returns`` and ``return_std``; gradient flows to ``values`` only. Values
    outside the mask are ignored, even NaN/inf.
    """
    m = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    v = torch.where(m, values, zero)
    v_old = torch.where(m, old_values.detach().to(values.dtype), zero)
    ret = torch.where(m, returns.detach().to(values.dtype), zero)
    err1 = v - ret
    if clip_eps is None:
        err2 = err1
    else:
        err2 = v_old + torch.clamp(v - v_old, -clip_eps, clip_eps) - ret
    if return_std is not None:
        std = return_std.detach() if isinstance(return_std, torch.Tensor) else return_std
        err1 = err1 / std
        err2 = err2 / std
    sq1, sq2 = err1**2, err2**2
    per_token = 0.5 * torch.maximum(sq1, sq2)
    loss = _normalise(masked_sum(per_token, mask), mask, normalizer)
    with torch.no_grad():
        stats = {
            "vf_clipfrac": masked_mean((sq2 > sq1).to(values.dtype), mask),
            "value_mean": masked_mean(v, mask),
            "value_error": masked_mean((v - ret) ** 2, mask),
        }
    return loss, {k: s.detach() for k, s in stats.items()}


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: float | torch.Tensor | None = None,
    label_prob: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry pairwise reward-model loss (Ouyang et al. 2022, eq. 1; soft labels: Lee et al. 2023,
    "RLAIF", distilled AI preferences).

    Shapes: ``chosen_rewards``, ``rejected_rewards`` ``(b,)``; ``margin`` float or ``(b,)``;
    ``label_prob`` ``(b,)`` -> 0-dim mean over ``b``.

    Formula: ``d = chosen - rejected - margin`` (margin 0 by default).
    Hard labels: ``-logsigmoid(d)``. Soft labels with ``p = P(chosen is better)``:
    ``d = chosen - rejected - margin * (2p - 1)`` and ``-(p * logsigmoid(d) + (1 - p) * logsigmoid(-d))``
    (cross-entropy against ``p``; minimised at ``sigmoid(d) = p``). The margin is scaled by the label's
    confidence ``2p - 1``: a full margin at p = 1, none at a tie (p = ½), whose minimiser stays
    ``chosen = rejected`` instead of being pushed ``margin`` apart. ``logsigmoid`` keeps it finite for any
    ``|d|``.

    Detaches ``label_prob`` and ``margin`` (targets); gradient flows to both reward tensors.
    """
    d = chosen_rewards - rejected_rewards
    m = None if margin is None else (margin.detach() if isinstance(margin, torch.Tensor) else margin)
    if label_prob is None:
        return -F.logsigmoid(d if m is None else d - m).mean()
    p = label_prob.detach().to(d.dtype)
    if m is not None:
        d = d - m * (2.0 * p - 1.0)
    return -(p * F.logsigmoid(d) + (1.0 - p) * F.logsigmoid(-d)).mean()
