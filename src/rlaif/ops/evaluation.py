"""Evaluation statistics: judge win-rate with a bootstrap interval, correlation, distinct-n, disagreement.

Shapes: n compared prompts (or answers); every input is a 1-D tensor or sequence of length n.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["win_outcomes", "bootstrap_mean_ci", "pearson", "distinct_n", "sign_disagreement"]


def win_outcomes(prob_better: torch.Tensor) -> torch.Tensor:
    """``(n,)`` P(policy better) -> ``(n,)`` outcomes: 1 win (p > ½), 0 loss (p < ½), ½ tie (p = ½).

    The win-rate is their mean: ties count as half a win.
    """
    p = prob_better.double()
    return torch.where(p > 0.5, 1.0, torch.where(p < 0.5, 0.0, 0.5)).to(prob_better.dtype)


def bootstrap_mean_ci(values: torch.Tensor, n_resamples: int = 2000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``(n,)`` values (resampling the n items with replacement).

    Returns (lo, hi) = the (1-level)/2 and (1+level)/2 quantiles of the ``n_resamples`` resampled means;
    (mean, mean) when n == 1. Seeded, so a rerun gives the same interval.
    """
    v = values.double().flatten()
    n = v.numel()
    if n == 0:
        raise ValueError("bootstrap_mean_ci: no values")
    if n == 1:
        return float(v[0]), float(v[0])
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_resamples, n), generator=g)
    means = v[idx].mean(dim=1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(means, q).tolist()
    return lo, hi


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two ``(n,)`` tensors; 0.0 when either is constant (no linear relation measurable)."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() != y.numel():
        raise ValueError(f"pearson: {x.numel()} vs {y.numel()} values")
    dx, dy = x - x.mean(), y - y.mean()
    denom = (dx.pow(2).sum() * dy.pow(2).sum()).sqrt()
    if x.numel() < 2 or denom == 0:
        return 0.0
    return float((dx * dy).sum() / denom)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique n-grams / all n-grams over whitespace tokens of every text (0.0 when there are none)."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        words = t.split()
        grams.extend(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


def sign_disagreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of items where two ``(n,)`` preference margins point opposite ways (items where either is exactly 0
    are left out); 0.0 when no item is decided by both."""
    sa, sb = torch.sign(a.double().flatten()), torch.sign(b.double().flatten())
    decided = (sa != 0) & (sb != 0)
    if not decided.any():
        return 0.0
    return float((sa[decided] != sb[decided]).double().mean())
