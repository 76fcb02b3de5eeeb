"""Drawing one token per row from a categorical distribution by inverting its CDF.

`torch.multinomial` (what `generate` samples with) draws one exponential variate per vocabulary entry: on
the CPU that is a serial loop over b x v random numbers (7.5 ms a step for 8 x 49152 here, 11 % of a
generation). Inverting the CDF needs one uniform per row; the distribution drawn from is the same.
"""

from __future__ import annotations

import torch

__all__ = ["inverse_cdf_sample", "sample_tokens"]


def inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index i with cdf[i-1] <= u * cdf[-1] < cdf[i], where cdf = cumsum(probs) (in float64).

    Shapes: ``probs`` ``(b, v)`` non-negative (need not sum to 1), ``u`` ``(b,)`` in [0, 1) -> ``(b,)`` long.
    Entries with probability 0 are never returned (the first cdf value strictly above the draw is taken), and
    the draw is scaled by the row's total so rounding in the sum cannot run past the last entry.
    """
    if probs.dim() != 2 or u.shape != probs.shape[:1]:
        raise ValueError(f"probs {tuple(probs.shape)} must be (b, v) and u {tuple(u.shape)} (b,)")
    cdf = probs.double().cumsum(dim=-1)
    target = (u.double() * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


def sample_tokens(logits: torch.Tensor, temperature: float = 1.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from ``softmax(logits / temperature)``.

    Shapes: ``logits`` ``(b, v)`` (any float dtype; ``-inf`` entries are never drawn) -> ``(b,)`` long.
    Uses one uniform per row from ``generator`` (the default generator of the logits' device when None).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    u = torch.rand(logits.shape[0], device=logits.device, generator=generator)
    return inverse_cdf_sample(probs, u)
