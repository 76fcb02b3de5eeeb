"""Reward-model math: centering penalty, pairwise statistics, the linear schedule, and the soft-label and margin
variants of the Bradley-Terry loss — all against hand-computed numbers."""

import math

import pytest
import torch
from torch.testing import assert_close

from rlaif.ops import bradley_terry_loss, linear_with_floor_lr, pairwise_stats, reward_centering_penalty


def test_centering_penalty_hand_value_and_grad():
    chosen = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    rejected = torch.tensor([0.5, 1.0, -0.5], requires_grad=True)
    # sums c + r = [1.5, -1.0, 0.0] ; squares [2.25, 1.0, 0.0] ; mean 3.25 / 3 = 1.0833333
    penalty = reward_centering_penalty(chosen, rejected)
    assert_close(penalty, torch.tensor(3.25 / 3))
    penalty.backward()
    # d/dc_i = d/dr_i = 2 (c_i + r_i) / 3 = [1.0, -0.6666667, 0.0]
    assert_close(chosen.grad, torch.tensor([1.0, -2.0 / 3, 0.0]))
    assert_close(rejected.grad, chosen.grad)
    # pairs that sum to 0 pay nothing, whatever their difference
    assert reward_centering_penalty(torch.tensor([3.0, -1.0]), torch.tensor([-3.0, 1.0])).item() == 0.0


def test_bradley_terry_soft_labels_with_per_row_margin_hand():
    chosen = torch.tensor([1.0, 0.5], requires_grad=True)
    rejected = torch.tensor([0.0, 1.0])
    margin = torch.tensor([0.5, -0.5])
    p = torch.tensor([0.7, 0.4])
    # soft labels scale the margin by the label's confidence 2p - 1: d = chosen - rejected - margin * (2p - 1)
    # row 0: d = 1.0 - 0.0 - 0.5 * 0.4 = 0.8
    #   -logsigmoid(0.8) = log(1 + e^-0.8) = 0.3711318 ; -logsigmoid(-0.8) = log(1 + e^0.8) = 1.1711318
    #   0.7 * 0.3711318 + 0.3 * 1.1711318 = 0.2597923 + 0.3513395 = 0.6111318 (0.6111007 unrounded)
    # row 1: d = 0.5 - 1.0 - (-0.5) * (-0.2) = -0.6
    #   -logsigmoid(-0.6) = 1.0374879 ; -logsigmoid(0.6) = 0.4374879 ; 0.4 * 1.0374879 + 0.6 * 0.4374879 = 0.677488
    # mean = (0.6111007 + 0.677488) / 2 = 0.6442943
    loss = bradley_terry_loss(chosen, rejected, margin=margin, label_prob=p)
    assert_close(loss, torch.tensor(0.6442943))
    row0 = 0.7 * math.log1p(math.exp(-0.8)) + 0.3 * math.log1p(math.exp(0.8))
    row1 = 0.4 * math.log1p(math.exp(0.6)) + 0.6 * math.log1p(math.exp(-0.6))
    assert_close(loss, torch.tensor((row0 + row1) / 2))
    loss.backward()
    # d loss_i / d d_i = sigmoid(d_i) - p_i, divided by b = 2:
    # row 0: (sigmoid(0.8) - 0.7) / 2 = (0.6899745 - 0.7) / 2 = -0.0050128
    # row 1: (sigmoid(-0.6) - 0.4) / 2 = (0.3543437 - 0.4) / 2 = -0.0228282
    assert_close(chosen.grad, torch.tensor([-0.0050128, -0.0228282]))


def test_bradley_terry_margin_is_a_shift_of_the_difference():
    chosen, rejected = torch.tensor([3.0, 0.0]), torch.tensor([1.0, 1.0])
    # hard labels, margin 1.0: d = [3 - 1 - 1, 0 - 1 - 1] = [1, -2]
    # -logsigmoid = [log(1 + e^-1), log(1 + e^2)] = [0.3132617, 2.1269280] ; mean 1.2200948
    assert_close(bradley_terry_loss(chosen, rejected, margin=1.0), torch.tensor(1.2200948))
    assert_close(bradley_terry_loss(chosen, rejected, margin=1.0), bradley_terry_loss(chosen - 1.0, rejected))
    # a tie (p = 0.5) with margin 1 is fit at EQUAL rewards: the margin scales by 2p - 1 = 0, d = 0, loss log 2,
    # gradient sigmoid(0) - 0.5 = 0. (Unscaled, the minimiser was chosen - rejected = 1: ties pushed apart.)
    c = torch.tensor([1.0], requires_grad=True)
    tie = bradley_terry_loss(c, torch.tensor([1.0]), margin=torch.tensor([1.0]), label_prob=torch.tensor([0.5]))
    assert_close(tie, torch.tensor(math.log(2)))
    tie.backward()
    assert_close(c.grad, torch.tensor([0.0]))
    # ... and rewards 1 apart are not a fit for a tie: d = 1, gradient sigmoid(1) - 0.5 = 0.2310586 > 0
    c = torch.tensor([2.0], requires_grad=True)
    bradley_terry_loss(c, torch.tensor([1.0]), margin=torch.tensor([1.0]), label_prob=torch.tensor([0.5])).backward()
    assert_close(c.grad, torch.tensor([0.2310586]))
    # p = 1 keeps the whole margin: the same as the hard-label loss
    assert_close(bradley_terry_loss(chosen, rejected, margin=1.0, label_prob=torch.tensor([1.0, 1.0])),
                 bradley_terry_loss(chosen, rejected, margin=1.0))


def test_pairwise_stats_hand():
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0])
    s = pairwise_stats(chosen, rejected)
    # 1 > 0 yes ; 0 > 0 a tie (wrong) ; 2 > 3 no -> 1/3
    assert s["accuracy"] == pytest.approx(1 / 3)
    assert s["margin_mean"] == pytest.approx(0.0)  # (1 + 0 - 1) / 3
    # all six rewards [1, 0, 2, 0, 0, 3]: mean 1 ; squared deviations [0, 1, 1, 1, 1, 4] = 8 ; 8 / 5 = 1.6
    assert s["reward_mean"] == pytest.approx(1.0)
    assert s["reward_std"] == pytest.approx(math.sqrt(1.6))
    assert s["chosen_mean"] == pytest.approx(1.0) and s["rejected_mean"] == pytest.approx(1.0)
    assert pairwise_stats(torch.tensor([1.0]), torch.tensor([1.0]))["reward_std"] == 0.0  # two equal rewards


def test_linear_with_floor_hand():
    # W = 2 warm-up steps, T = 7, floor 0.1: p = (s - 2) / (7 - 2 - 1) = (s - 2) / 4 ; lr = 1 - 0.9 p
    lr = [linear_with_floor_lr(s, 7, 1.0, 0.1, 2) for s in range(9)]
    assert lr == pytest.approx([0.5, 1.0, 1.0, 0.775, 0.55, 0.325, 0.1, 0.1, 0.1])
    assert linear_with_floor_lr(0, 1, 2.0, 0.0) == pytest.approx(2.0)  # a single step uses the peak
    assert linear_with_floor_lr(3, 4, 2.0, 0.0) == pytest.approx(0.0)  # floor 0: the last of 4 steps
    assert {linear_with_floor_lr(s, 5, 3.0, 1.0) for s in range(5)} == {3.0}  # floor ratio 1: constant
