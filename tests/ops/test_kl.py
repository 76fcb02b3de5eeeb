import math

import pytest
import torch
from torch.testing import assert_close

from rlaif.ops import AdaptiveKLController, FixedKLController, kl, make_kl_controller

LOGP = torch.tensor([-1.0, -2.0, -0.5])
LOGQ = torch.tensor([-1.5, -1.0, -0.5])


def test_k1_k2_k3_hand():
    # logp - logq = [0.5, -1.0, 0.0]
    assert_close(kl(LOGP, LOGQ, "k1"), torch.tensor([0.5, -1.0, 0.0]))
    assert_close(kl(LOGP, LOGQ), torch.tensor([0.5, -1.0, 0.0]))  # default is k1
    # 0.5 * [0.25, 1.0, 0.0]
    assert_close(kl(LOGP, LOGQ, "k2"), torch.tensor([0.125, 0.5, 0.0]))
    # r = logq - logp = [-0.5, 1.0, 0.0]; exp(r) - 1 - r:
    # exp(-0.5) - 1 + 0.5 = 0.6065307 - 0.5 = 0.1065307 ; e - 1 - 1 = 0.7182818 ; 1 - 1 - 0 = 0
    expected = torch.tensor([math.exp(-0.5) - 0.5, math.e - 2.0, 0.0])
    assert_close(kl(LOGP, LOGQ, "k3"), expected)
    assert_close(expected, torch.tensor([0.1065307, 0.7182818, 0.0]))


def test_k3_nonnegative_and_zero_when_equal():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(5, 9, generator=g) * 5
    logq = -torch.rand(5, 9, generator=g) * 5
    assert torch.all(kl(logp, logq, "k3") >= 0)
    assert torch.all(kl(logp, logq, "k2") >= 0)
    assert torch.all(kl(logp, logp, "k3") == 0)
    assert torch.all(kl(logp, logp, "k1") == 0)


def test_any_shape():
    x = torch.randn(2, 3, 4)
    y = torch.randn(2, 3, 4)
    for est in ("k1", "k2", "k3"):
        assert kl(x, y, est).shape == (2, 3, 4)
    assert kl(torch.tensor(-1.0), torch.tensor(-1.5)).shape == ()


def test_unknown_estimator():
    with pytest.raises(ValueError, match="k4"):
        kl(LOGP, LOGQ, "k4")


def test_fixed_controller():
    c = FixedKLController(0.05)
    assert c.value == 0.05
    c.update(100.0, 256)
    c.update(torch.tensor(0.0), 256)
    assert c.value == 0.05
    d = c.state_dict()
    c2 = FixedKLController(1.0)
    c2.load_state_dict(d)
    assert c2.value == 0.05


def test_adaptive_controller_hand_sequence():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # step 1: 12/6 - 1 = 1.0 -> clipped to 0.2 ; mult = 1 + 0.2*256/10000 = 1.00512 ; 0.1*1.00512 = 0.100512
    c.update(12.0, 256)
    assert c.value == pytest.approx(0.100512, rel=1e-12)
    # step 2: 3/6 - 1 = -0.5 -> clipped to -0.2 ; mult = 1 - 0.00512 = 0.99488 ; 0.100512*0.99488 = 0.0999973786
    c.update(torch.tensor(3.0), 256)
    assert c.value == pytest.approx(0.100512 * 0.99488, rel=1e-12)
    assert c.value == pytest.approx(0.0999973786, rel=1e-9)
    # step 3: 6.6/6 - 1 = 0.1 (inside the clip) ; mult = 1 + 0.1*128/10000 = 1.00128
    c.update(6.6, 128)
    assert c.value == pytest.approx(0.100512 * 0.99488 * 1.00128, rel=1e-9)
    # step 4: at target -> error 0 -> unchanged
    before = c.value
    c.update(6.0, 1000)
    assert c.value == pytest.approx(before, rel=1e-12)

    c2 = AdaptiveKLController(0.5, target=6.0, horizon=10000)
    c2.load_state_dict(c.state_dict())
    assert c2.value == c.value


def test_adaptive_controller_validation():
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=1.0, horizon=0)


def test_make_kl_controller():
    fixed = make_kl_controller(0.2)
    assert isinstance(fixed, FixedKLController) and fixed.value == 0.2
    adaptive = make_kl_controller(0.2, target=6.0)
    assert isinstance(adaptive, AdaptiveKLController)
    assert adaptive.value == 0.2 and adaptive.target == 6.0 and adaptive.horizon == 10000
    adaptive = make_kl_controller(0.2, target=6.0, horizon=500)
    assert adaptive.horizon == 500
