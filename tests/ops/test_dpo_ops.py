"""DPO math against hand-computed numbers: the sigmoid loss, label smoothing (conservative DPO), soft labels,
the implicit rewards, gradients, and the summed log-probability of labelled tokens."""

import math

import pytest
import torch
from torch.testing import assert_close

from rlaif.ops import IGNORE_INDEX, dpo_loss, sequence_logprobs, token_ce_sum

# Three pairs, beta = 0.5:
#   row 0: chosen log-ratio -5 - (-6) = 1,  rejected -7 - (-6) = -1 ; h = 2  -> z = beta * h = 1.0
#   row 1: chosen log-ratio -3 - (-3) = 0,  rejected -2 - (-3) = 1  ; h = -1 -> z = -0.5
#   row 2: chosen log-ratio -10 - (-9) = -1, rejected -10 - (-9) = -1 ; h = 0 -> z = 0
POLICY_C, POLICY_R = [-5.0, -3.0, -10.0], [-7.0, -2.0, -10.0]
REF_C, REF_R = [-6.0, -3.0, -9.0], [-6.0, -3.0, -9.0]
# -logsigmoid(x) = log(1 + e^-x): x = 1 -> 0.3132617, -1 -> 1.3132617, 0.5 -> 0.4740770, -0.5 -> 0.9740770
NLS = {1.0: 0.3132617, -1.0: 1.3132617, 0.5: 0.4740770, -0.5: 0.9740770}
LOG2 = math.log(2)


def _inputs(requires_grad: bool = False):
    pc = torch.tensor(POLICY_C, requires_grad=requires_grad)
    pr = torch.tensor(POLICY_R, requires_grad=requires_grad)
    return pc, pr, torch.tensor(REF_C), torch.tensor(REF_R)


def test_sigmoid_loss_and_implicit_rewards_hand():
    losses, chosen, rejected = dpo_loss(*_inputs(), beta=0.5)
    # row 0: -logsigmoid(1) ; row 1: -logsigmoid(-0.5) ; row 2: log 2
    assert_close(losses, torch.tensor([NLS[1.0], NLS[-0.5], LOG2]))
    # rewards = beta * log-ratio: [0.5 * 1, 0.5 * 0, 0.5 * -1] and [0.5 * -1, 0.5 * 1, 0.5 * -1]
    assert_close(chosen, torch.tensor([0.5, 0.0, -0.5]))
    assert_close(rejected, torch.tensor([-0.5, 0.5, -0.5]))


def test_label_smoothing_is_the_conservative_loss_hand():
    losses, _, _ = dpo_loss(*_inputs(), beta=0.5, label_smoothing=0.1)
    # (1 - 0.1) * -logsigmoid(z) + 0.1 * -logsigmoid(-z)
    # row 0: 0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.2819355 + 0.1313262 = 0.4132617
    # row 1: 0.9 * 0.9740770 + 0.1 * 0.4740770 = 0.8766693 + 0.0474077 = 0.9240770
    # row 2: z = 0 -> log 2 whatever the smoothing
    assert_close(losses, torch.tensor([0.4132617, 0.9240770, LOG2]))
    # a (b,) tensor of the same value is the same loss
    same, _, _ = dpo_loss(*_inputs(), beta=0.5, label_smoothing=torch.full((3,), 0.1))
    assert_close(same, losses)


def test_soft_labels_per_row_hand():
    p = torch.tensor([0.8, 0.5, 1.0])  # P(chosen is better) -> label_smoothing = 1 - p = [0.2, 0.5, 0.0]
    losses, _, _ = dpo_loss(*_inputs(), beta=0.5, label_smoothing=1.0 - p)
    # row 0: 0.8 * 0.3132617 + 0.2 * 1.3132617 = 0.2506093 + 0.2626523 = 0.5132617
    # row 1: 0.5 * 0.9740770 + 0.5 * 0.4740770 = 0.7240770
    # row 2: hard label at z = 0: log 2
    assert_close(losses, torch.tensor([0.5132617, 0.7240770, LOG2]))


def test_gradients_flow_to_the_policy_only_hand():
    pc, pr, rc, rr = _inputs(requires_grad=True)
    rc.requires_grad_(True)
    eps = torch.tensor([0.0, 0.5, 0.0], requires_grad=True)
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=eps)
    assert not chosen.requires_grad and not rejected.requires_grad  # logging only
    losses.sum().backward()
    # d loss / dz = sigmoid(z) - (1 - eps); d z / d pc = beta, d z / d pr = -beta
    # row 0: sigmoid(1) = 0.7310586 -> 0.5 * (0.7310586 - 1) = -0.1344707
    # row 1: sigmoid(-0.5) = 0.3775407, eps 0.5 -> 0.5 * (0.3775407 - 0.5) = -0.0612297
    # row 2: sigmoid(0) = 0.5 -> 0.5 * (0.5 - 1) = -0.25
    assert_close(pc.grad, torch.tensor([-0.1344707, -0.0612297, -0.25]))
    assert_close(pr.grad, -pc.grad)
    assert rc.grad is None and eps.grad is None  # reference and targets are detached


def test_soft_label_is_a_fixed_point_where_sigmoid_z_equals_p():
    # p = 0.8: sigmoid(z) = 0.8 at z = log(0.8 / 0.2) = log 4 = 1.3862944 ; beta = 1, h = log 4
    pc = torch.tensor([math.log(4.0)], requires_grad=True)
    losses, _, _ = dpo_loss(pc, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=1.0,
                            label_smoothing=torch.tensor([0.2]))
    losses.sum().backward()
    assert_close(pc.grad, torch.zeros(1), atol=1e-7, rtol=0)
    # the loss there is the entropy of Bernoulli(0.8): -(0.8 log 0.8 + 0.2 log 0.2) = 0.5004024
    assert_close(losses, torch.tensor([0.5004024]))


def test_beta_scales_the_margin():
    # beta = 0.1 on row 0 (h = 2): z = 0.2 -> -logsigmoid(0.2) = log(1 + e^-0.2) = 0.5981389 ; reward 0.1
    losses, chosen, _ = dpo_loss(*_inputs(), beta=0.1)
    assert_close(losses[0], torch.tensor(0.5981389))
    assert_close(chosen[0], torch.tensor(0.1))


def test_large_margins_stay_finite():
    big = torch.tensor([1e4, -1e4])
    losses, _, _ = dpo_loss(big, -big, torch.zeros(2), torch.zeros(2), beta=1.0, label_smoothing=0.1)
    # z = +-2e4: row 0 costs 0.1 * 2e4 = 2000 (the flipped term), row 1 costs 0.9 * 2e4 = 18000
    assert torch.isfinite(losses).all()
    assert_close(losses, torch.tensor([2000.0, 18000.0]))


@pytest.mark.parametrize("smoothing", [1.5, -0.1, torch.tensor([0.1, 1.2, 0.0]), torch.zeros(2)])
def test_bad_label_smoothing_is_an_error(smoothing):
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(*_inputs(), beta=0.5, label_smoothing=smoothing)


def test_shapes_must_match():
    pc, pr, rc, rr = _inputs()
    with pytest.raises(ValueError, match="one"):
        dpo_loss(pc, pr[:2], rc, rr, beta=0.1)


def test_sequence_logprobs_hand():
    # row 0, position 0: logits [0, 0] -> log softmax = [-log 2, -log 2]
    #        position 1: logits [log 3, 0] -> softmax [0.75, 0.25] -> log 0.75 = -0.2876821 for token 0
    #        position 2: anything (it predicts nothing: the sequence ends)
    # labels [ignore, 1, 0]: token 1 at position 1 (from position 0's logits) and token 0 at position 2
    # -> -0.6931472 + -0.2876821 = -0.9808293
    # row 1: every label ignored -> 0
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]],
                           [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0], [IGNORE_INDEX] * 3])
    out = sequence_logprobs(logits, labels)
    assert_close(out, torch.tensor([-0.9808293, 0.0]))
    # the same tokens as the SFT cross-entropy: sum of -logprobs == token_ce_sum
    total, count = token_ce_sum(logits, labels)
    assert_close(-out.sum(), total)
    assert count.item() == 2


def test_sequence_logprobs_gradient_and_shape_check():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, 2, 3, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, 1, 4]])
    sequence_logprobs(logits, labels).sum().backward()
    # only positions that predict a labelled token get gradient: row 0 positions 0, 1 ; row 1 positions 1, 2
    touched = logits.grad.abs().sum(-1) > 0
    assert touched.tolist() == [[True, True, False, False], [False, True, True, False]]
    with pytest.raises(ValueError, match="do not match"):
        sequence_logprobs(logits, labels[:, :3])
