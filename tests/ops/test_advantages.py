import torch
from torch.testing import assert_close

from rlaif.ops import gae


def _gae_loop(rewards, values, mask, gamma, lam):
    """Plain-Python reference: for each row, GAE over the contiguous prefix of length n, zeros after."""
    b, t = rewards.shape
    adv = torch.zeros(b, t, dtype=torch.float64)
    ret = torch.zeros(b, t, dtype=torch.float64)
    for i in range(b):
        n = int(mask[i].sum())
        last = 0.0
        for j in reversed(range(n)):
            next_v = float(values[i, j + 1]) if j + 1 < n else 0.0
            delta = float(rewards[i, j]) + gamma * next_v - float(values[i, j])
            last = delta + gamma * lam * last
            adv[i, j] = last
            ret[i, j] = last + float(values[i, j])
    return adv, ret


def test_gae_hand_1x3():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # t=2: delta = 1 + 1*0 (terminal) - 0.7 = 0.3            A2 = 0.3
    # t=1: delta = 0 + 0.7 - 0.6 = 0.1                       A1 = 0.1 + 0.95*0.3   = 0.385
    # t=0: delta = 0 + 0.6 - 0.5 = 0.1                       A0 = 0.1 + 0.95*0.385 = 0.46575
    assert_close(adv, torch.tensor([[0.46575, 0.385, 0.3]]))
    # returns = A + V = [0.96575, 0.985, 1.0]
    assert_close(ret, torch.tensor([[0.96575, 0.985, 1.0]]))


def test_gae_hand_2x3_with_padding_and_discount():
    rewards = torch.tensor([[1.0, 2.0, 99.0], [0.0, 0.0, 0.0]])
    values = torch.tensor([[1.0, 1.0, 99.0], [2.0, 3.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    # row 0 (length 2; position 2 is padding, its 99s are ignored):
    #   t=1: delta = 2 + 0.5*0 - 1 = 1.0                        A = 1.0
    #   t=0: delta = 1 + 0.5*1 - 1 = 0.5                        A = 0.5 + 0.25*1.0 = 0.75
    # row 1 (length 3):
    #   t=2: delta = 0 + 0 - 4 = -4                             A = -4
    #   t=1: delta = 0 + 0.5*4 - 3 = -1                         A = -1 + 0.25*(-4) = -2
    #   t=0: delta = 0 + 0.5*3 - 2 = -0.5                       A = -0.5 + 0.25*(-2) = -1
    assert_close(adv, torch.tensor([[0.75, 1.0, 0.0], [-1.0, -2.0, -4.0]]))
    # returns = A + V inside the mask: row 0 [1.75, 2.0, 0] ; row 1 [1.0, 1.0, 0.0]
    assert_close(ret, torch.tensor([[1.75, 2.0, 0.0], [1.0, 1.0, 0.0]]))


def test_gae_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    b, t = 6, 9
    lengths = torch.tensor([9, 1, 0, 4, 8, 5])
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    rewards = torch.randn(b, t, generator=g, dtype=torch.float64)
    values = torch.randn(b, t, generator=g, dtype=torch.float64)
    for gamma, lam in ((1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)):
        adv, ret = gae(rewards, values, mask, gamma, lam)
        exp_adv, exp_ret = _gae_loop(rewards, values, mask, gamma, lam)
        assert_close(adv, exp_adv)
        assert_close(ret, exp_ret)


def test_gae_garbage_outside_mask_changes_nothing():
    g = torch.Generator().manual_seed(1)
    b, t = 4, 6
    lengths = torch.tensor([6, 2, 0, 5])
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    rewards = torch.randn(b, t, generator=g)
    values = torch.randn(b, t, generator=g)
    clean_r = torch.where(mask, rewards, 0.0)
    clean_v = torch.where(mask, values, 0.0)
    garbage = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -7.0, 3.0]).expand(b, t)
    dirty_r = torch.where(mask, rewards, garbage)
    dirty_v = torch.where(mask, values, garbage.flip(-1))
    adv_c, ret_c = gae(clean_r, clean_v, mask, 0.99, 0.95)
    adv_d, ret_d = gae(dirty_r, dirty_v, mask.float(), 0.99, 0.95)
    assert torch.equal(adv_c, adv_d)
    assert torch.equal(ret_c, ret_d)
    assert torch.isfinite(adv_d).all() and torch.isfinite(ret_d).all()
    assert torch.all(adv_d[~mask] == 0) and torch.all(ret_d[~mask] == 0)


def test_gae_is_detached():
    rewards = torch.randn(2, 3, requires_grad=True)
    values = torch.randn(2, 3, requires_grad=True)
    adv, ret = gae(rewards, values, torch.ones(2, 3), 1.0, 0.95)
    assert not adv.requires_grad and not ret.requires_grad
