"""Evaluation statistics against hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from rlaif import ops


def test_win_outcomes_ties_count_half():
    out = ops.win_outcomes(torch.tensor([0.9, 0.2, 0.5, 0.51]))
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 0.5, 1.0]))
    assert out.mean().item() == pytest.approx(2.5 / 4)  # (1 + 0 + 0.5 + 1) / 4


def test_bootstrap_interval_contains_the_mean_and_is_seeded():
    v = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5, 1.0, 0.0, 1.0])  # mean 5.5 / 8 = 0.6875
    lo, hi = ops.bootstrap_mean_ci(v, n_resamples=4000, seed=3)
    assert lo < 0.6875 < hi
    # normal approximation: sd = 0.4115 (population sd of v), se = 0.4115/sqrt(8) = 0.1455, 1.96·se = 0.285
    assert hi - lo == pytest.approx(2 * 0.285, abs=0.08)
    assert (lo, hi) == ops.bootstrap_mean_ci(v, n_resamples=4000, seed=3)
    assert ops.bootstrap_mean_ci(torch.ones(5)) == (1.0, 1.0)  # no spread, no interval
    assert ops.bootstrap_mean_ci(torch.tensor([0.25])) == (0.25, 0.25)
    with pytest.raises(ValueError):
        ops.bootstrap_mean_ci(torch.tensor([]))


def test_pearson_hand_computed():
    # x = 1,2,3 ; y = 2,4,7: dx = -1,0,1 ; dy = -2.333,-0.333,2.667 ; sum dx·dy = 5 ;
    # sum dx² = 2 ; sum dy² = 5.444+0.111+7.111 = 12.667 ; r = 5 / sqrt(2 · 12.667) = 5 / 5.0332 = 0.99340
    assert ops.pearson(torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 4, 7])) == pytest.approx(0.99340, abs=1e-5)
    assert ops.pearson(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == pytest.approx(-1.0)
    assert ops.pearson(torch.tensor([1.0, 1, 1]), torch.tensor([3.0, 2, 1])) == 0.0


def test_distinct_2():
    # "a b a b": bigrams (a b), (b a), (a b) ; "a b c": (a b), (b c) -> 5 bigrams, 3 unique
    assert ops.distinct_n(["a b a b", "a b c"], 2) == pytest.approx(3 / 5)
    assert ops.distinct_n(["one", ""], 2) == 0.0


def test_sign_disagreement_skips_undecided():
    a = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    b = torch.tensor([0.2, 0.1, -0.3, 0.4, 0.0])
    # decided by both: items 0, 1, 2 ; opposite signs at 1 and 2 -> 2/3
    assert ops.sign_disagreement(a, b) == pytest.approx(2 / 3)
    assert ops.sign_disagreement(torch.zeros(3), torch.ones(3)) == 0.0


def test_cohens_kappa_hand_computed():
    # p_o = 3/4; rater a: (½, ½), rater b: (¼, ¾) -> p_e = ⅛ + ⅜ = ½ -> kappa = (¾ − ½) / ½ = ½
    assert ops.cohens_kappa([0, 0, 1, 1], [0, 1, 1, 1], 2) == pytest.approx(0.5)
    # perfect agreement over three categories -> 1; systematic disagreement on two -> p_o 0, p_e ½ -> −1
    assert ops.cohens_kappa([0, 1, 2, 2], [0, 1, 2, 2], 3) == pytest.approx(1.0)
    assert ops.cohens_kappa([0, 1, 0, 1], [1, 0, 1, 0], 2) == pytest.approx(-1.0)
    # both raters always use the same single category: chance agreement is 1, kappa undefined
    assert ops.cohens_kappa([1, 1], [1, 1], 3) != ops.cohens_kappa([1, 1], [1, 1], 3)  # NaN
    with pytest.raises(ValueError, match="categories"):
        ops.cohens_kappa([0, 3], [0, 1], 3)


def test_wilson_interval_hand_computed():
    # 8 of 10, z = 1.96: denom 1.38416, center 0.992080 / 1.38416 = 0.716738,
    # half = 1.96 · sqrt(0.016 + 0.009604) / 1.38416 = 0.226579
    lo, hi = ops.wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.490157, 0.943319), abs=1e-6)
    assert ops.wilson_interval(0, 5)[0] == 0.0 and ops.wilson_interval(5, 5)[1] == pytest.approx(1.0)


def test_paired_difference_hand_computed():
    # differences 0.5, -0.1, 0.4, 0.2: mean 0.25; deviations 0.25, -0.35, 0.15, -0.05 -> squares sum 0.21,
    # sd = sqrt(0.21 / 3) = 0.264575, se = 0.264575 / 2 = 0.132288
    mean, se = ops.paired_difference(torch.tensor([1.0, 0.2, 0.9, 0.2]), torch.tensor([0.5, 0.3, 0.5, 0.0]))
    assert (mean, se) == pytest.approx((0.25, 0.132288), abs=1e-6)
    assert ops.paired_difference(torch.tensor([2.0]), torch.tensor([1.5])) == (0.5, 0.0)
    with pytest.raises(ValueError, match="two"):
        ops.paired_difference(torch.zeros(3), torch.zeros(2))
