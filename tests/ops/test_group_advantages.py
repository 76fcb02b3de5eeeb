"""GRPO group-normalised and RLOO leave-one-out advantages against hand-computed numbers, edge cases (equal
rewards, G = 1, bad layouts) and a loop-vs-vectorised check."""

import statistics

import pytest
import torch
from torch.testing import assert_close

from rlaif.ops import group_advantages, rloo_advantages


def test_group_advantages_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0])
    # group 0 [1, 2, 3]: mean 2, centred [-1, 0, 1], unbiased std sqrt((1 + 0 + 1) / 2) = 1
    #   eps = 0 -> [-1, 0, 1] ; eps = 1e-4 -> [-1 / 1.0001, 0, 1 / 1.0001]
    # group 1 [4, 4, 4]: all equal -> [0, 0, 0] (not NaN)
    assert_close(group_advantages(rewards, 3, eps=0.0), torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    assert_close(group_advantages(rewards, 3), torch.tensor([-1 / 1.0001, 0.0, 1 / 1.0001, 0.0, 0.0, 0.0]))


def test_group_advantages_one_correct_answer_of_four_hand():
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0])
    # mean 0.25, centred [-0.25, 0.75, -0.25, -0.25]
    # unbiased var = (3 * 0.0625 + 0.5625) / 3 = 0.75 / 3 = 0.25 -> std 0.5
    assert_close(group_advantages(rewards, 4, eps=0.0), torch.tensor([-0.5, 1.5, -0.5, -0.5]))
    # without the std: the centred rewards (Dr. GRPO)
    assert_close(group_advantages(rewards, 4, normalise_std=False), torch.tensor([-0.25, 0.75, -0.25, -0.25]))


def test_group_advantages_edge_cases():
    equal = torch.tensor([0.7, 0.7, 0.7, 0.7])
    for eps in (0.0, 1e-4):  # equal rewards: 0, never NaN, even without eps
        out = group_advantages(equal, 2, eps=eps)
        assert torch.equal(out, torch.zeros(4))
    # G = 1: every answer is its own group mean -> 0 (no NaN from the n - 1 std)
    assert torch.equal(group_advantages(torch.tensor([1.0, -3.0, 2.0]), 1), torch.zeros(3))
    # integer rewards become float; gradients never flow
    ints = group_advantages(torch.tensor([0, 1]), 2, eps=0.0)
    # mean 0.5, centred [-0.5, 0.5], unbiased std sqrt(0.5) = 0.7071068 -> [-0.7071068, 0.7071068]
    assert ints.dtype == torch.float32 and torch.allclose(ints, torch.tensor([-0.7071068, 0.7071068]))
    assert not group_advantages(torch.ones(4, requires_grad=True), 2).requires_grad
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match=r"\(b,\)"):
        group_advantages(torch.zeros(2, 2), 2)


def test_rloo_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 1.0, 0.0])
    # group 0 [1, 2, 3]: others' means [(2 + 3) / 2, (1 + 3) / 2, (1 + 2) / 2] = [2.5, 2, 1.5] -> [-1.5, 0, 1.5]
    #   (= G / (G - 1) * (r - mean) = 1.5 * [-1, 0, 1])
    # group 1 [0, 1, 0]: others' means [0.5, 0, 0.5] -> [-0.5, 1, -0.5]
    assert_close(rloo_advantages(rewards, 3), torch.tensor([-1.5, 0.0, 1.5, -0.5, 1.0, -0.5]))
    # G = 4, one correct answer: others' means [1/3, 0, 1/3, 1/3] -> [-1/3, 1, -1/3, -1/3]
    assert_close(rloo_advantages(torch.tensor([0.0, 1.0, 0.0, 0.0]), 4), torch.tensor([-1 / 3, 1.0, -1 / 3, -1 / 3]))
    # G = 2: each answer against the other: [2 - 5, 5 - 2]
    assert_close(rloo_advantages(torch.tensor([2.0, 5.0]), 2), torch.tensor([-3.0, 3.0]))


def test_rloo_edge_cases():
    assert torch.equal(rloo_advantages(torch.full((6,), 0.3), 3), torch.zeros(6))  # equal rewards -> 0
    with pytest.raises(ValueError, match="at least 2"):
        rloo_advantages(torch.tensor([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="groups of 3"):
        rloo_advantages(torch.zeros(4), 3)
    assert not rloo_advantages(torch.ones(4, requires_grad=True), 2).requires_grad


def test_loop_equals_vectorised():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(5 * 4, generator=g, dtype=torch.float64)
    grpo, rloo = group_advantages(rewards, 4, eps=1e-4), rloo_advantages(rewards, 4)
    for k in range(5):
        group = rewards[4 * k:4 * k + 4].tolist()
        mean, std = statistics.mean(group), statistics.stdev(group)
        for i, r in enumerate(group):
            others = group[:i] + group[i + 1:]
            assert grpo[4 * k + i].item() == pytest.approx((r - mean) / (std + 1e-4), rel=1e-12)
            assert rloo[4 * k + i].item() == pytest.approx(r - statistics.mean(others), rel=1e-12, abs=1e-12)


def test_centre_within_groups_uses_only_valid_rows():
    from rlaif.ops import centre_within_groups

    # group 0: [1.0 valid, 5.0 dropped] -> the valid mean is 1.0: [0, 0] (averaging in the dropped 5.0 gave the
    # only trainable answer 1 - 3 = -2); group 1: [2, 4] both valid -> mean 3: [-1, +1];
    # group 2: nothing valid -> [0, 0]
    scores = torch.tensor([1.0, 5.0, 2.0, 4.0, 7.0, 9.0])
    valid = torch.tensor([True, False, True, True, False, False])
    assert centre_within_groups(scores, 2, valid).tolist() == [0.0, 0.0, -1.0, 1.0, 0.0, 0.0]
    # without a mask every row counts: group means 3, 3, 8
    assert centre_within_groups(scores, 2).tolist() == [-2.0, 2.0, -1.0, 1.0, -1.0, 1.0]
    # groups of 3 with one dropped: [3 valid, 0 dropped, 6 valid] -> mean 4.5 -> [-1.5, 0, 1.5]
    out = centre_within_groups(torch.tensor([3.0, 0.0, 6.0]), 3, torch.tensor([True, False, True]))
    assert out.tolist() == [-1.5, 0.0, 1.5]
