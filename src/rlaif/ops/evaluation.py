"""Evaluation statistics: judge win-rate with a bootstrap interval, correlation, distinct-n, disagreement.

Shapes: n compared prompts (or answers); every input is a 1-D tensor or sequence of length n.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["win_outcomes", "bootstrap_mean_ci", "pearson", "distinct_n", "sign_disagreement", "cohens_kappa",
           "wilson_interval", "paired_difference"]


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


def cohens_kappa(a: Sequence[int], b: Sequence[int], k: int) -> float:
    """Cohen's kappa of two raters over the same n items; ``a``, ``b``: ``(n,)`` category indices in [0, k).

    kappa = (p_o − p_e) / (1 − p_e), p_o = share of items where they agree, p_e = Σ_c p_a(c) · p_b(c) (chance
    agreement from each rater's own category rates). NaN when n = 0 or p_e = 1 (both always say the same one
    category: agreement carries no information).
    """
    n = len(a)
    if len(b) != n:
        raise ValueError("cohens_kappa: a and b must have the same length")
    if any(not 0 <= x < k for x in (*a, *b)):
        raise ValueError(f"cohens_kappa: categories must be in [0, {k})")
    if n == 0:
        return float("nan")
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((list(a).count(c) / n) * (list(b).count(c) / n) for c in range(k))
    return float("nan") if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes of n; z = 1.96 for 95 %): center ± half, where
    center = (p + z²/2n) / (1 + z²/n), half = z · sqrt(p(1 − p)/n + z²/4n²) / (1 + z²/n). (NaN, NaN) when n = 0.
    """
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError("wilson_interval: successes must be in [0, n]")
    p, z2 = successes / n, z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * (p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5 / denom
    return max(0.0, center - half), min(1.0, center + half)


def paired_difference(after: torch.Tensor, before: torch.Tensor) -> tuple[float, float]:
    """(n,) scores of the same n items after and before -> (mean of after − before, its standard error
    sd(after − before) / sqrt(n), sd with n − 1; 0 when n < 2). A gain is beyond its noise when it exceeds about
    twice the standard error (the items are the noise: other prompts, other samples)."""
    if after.shape != before.shape or after.dim() != 1:
        raise ValueError(f"paired_difference needs two (n,) tensors, got {tuple(after.shape)} and "
                         f"{tuple(before.shape)}")
    d = after.double() - before.double()
    n = d.numel()
    mean = float(d.mean()) if n else 0.0
    se = float(d.std() / n ** 0.5) if n > 1 else 0.0
    return mean, se
