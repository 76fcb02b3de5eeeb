"""ops.sampling: inverse-CDF draws against hand-computed indices, and their frequencies against softmax."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.ops.sampling import inverse_cdf_sample, sample_tokens


def test_inverse_cdf_picks_by_hand():
    # cdf = [0.25, 0.25, 0.5, 1.0] (exact in binary): [0, 0.25) -> 0, [0.25, 0.5) -> 2 (index 1 has
    # probability 0), [0.5, 1) -> 3
    probs = torch.tensor([[0.25, 0.0, 0.25, 0.5]]).expand(6, 4)
    u = torch.tensor([0.0, 0.1, 0.25, 0.49, 0.5, 0.999])
    assert inverse_cdf_sample(probs, u).tolist() == [0, 0, 2, 2, 3, 3]


def test_inverse_cdf_scales_by_the_row_total():
    # unnormalised rows: weights [1, 3] -> cdf [1, 4]; u = 0.25 -> target 1.0 -> index 1; u = 0.2 -> 0.8 -> 0
    probs = torch.tensor([[1.0, 3.0], [1.0, 3.0]])
    assert inverse_cdf_sample(probs, torch.tensor([0.25, 0.2])).tolist() == [1, 0]


def test_inverse_cdf_never_returns_a_zero_probability_tail():
    probs = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert inverse_cdf_sample(probs, torch.tensor([1.0 - 2**-24])).tolist() == [1]


def test_inverse_cdf_rejects_bad_shapes():
    with pytest.raises(ValueError, match="must be"):
        inverse_cdf_sample(torch.ones(3), torch.zeros(3))


def test_sample_tokens_frequencies_follow_softmax_over_temperature():
    """20,000 draws from softmax([0, 1, 2, -inf] / 0.5): each frequency within 5 standard errors of its
    probability, and the -inf entry never drawn."""
    logits = torch.tensor([[0.0, 1.0, 2.0, -math.inf]]).expand(20_000, 4)
    gen = torch.Generator().manual_seed(0)
    drawn = sample_tokens(logits, temperature=0.5, generator=gen)
    freq = torch.bincount(drawn, minlength=4).double() / drawn.numel()
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0, -math.inf], dtype=torch.float64) / 0.5, dim=0)
    se = (p * (1 - p) / drawn.numel()).sqrt()
    assert freq[3] == 0
    assert ((freq[:3] - p[:3]).abs() <= 5 * se[:3]).all(), (freq.tolist(), p.tolist())


def test_sample_tokens_is_reproducible_with_a_seed_and_rejects_zero_temperature():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    a = sample_tokens(logits, 1.0, torch.Generator().manual_seed(3))
    b = sample_tokens(logits, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="temperature"):
        sample_tokens(logits, 0.0)
