import math

import torch
from torch.testing import assert_close

from rlaif.ops import kl, last_valid_index, shaped_rewards


def test_last_valid_index_hand():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1], [1, 0, 1]], dtype=torch.bool)
    # last True per row: 1, none (-1), 2, 2 (works for non-contiguous rows too)
    out = last_valid_index(mask)
    assert_close(out, torch.tensor([1, -1, 2, 2]))
    assert out.dtype == torch.long
    assert_close(last_valid_index(mask.float()), torch.tensor([1, -1, 2, 2]))


def test_shaped_rewards_hand_k1():
    scores = torch.tensor([10.0, 20.0, 30.0])
    logp = torch.tensor([[-1.0, -2.0, float("nan")], [-1.0, 5.0, 5.0], [-1.0, -1.0, -1.0]])
    logq = torch.tensor([[-1.5, -1.0, -3.0], [-2.0, float("inf"), 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    rewards, kl_t = shaped_rewards(scores, logp, logq, mask, kl_coef=0.1)
    # row 0: k1 = [-1-(-1.5), -2-(-1), masked] = [0.5, -1.0, 0]
    # row 1: k1 = [-1-(-2), masked, masked] = [1.0, 0, 0]   (garbage/NaN outside the mask ignored)
    # row 2: empty mask -> all zero, and its score 30 is not added anywhere
    assert_close(kl_t, torch.tensor([[0.5, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    # rewards = -0.1 * kl, plus the score at the last valid token:
    # row 0: [-0.05, 0.1 + 10, 0] ; row 1: [-0.1 + 20, 0, 0] ; row 2: zeros
    assert_close(rewards, torch.tensor([[-0.05, 10.1, 0.0], [19.9, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_shaped_rewards_hand_k3_and_tensor_coef():
    scores = torch.tensor([1.0])
    logp = torch.tensor([[-1.0, -2.0]])
    logq = torch.tensor([[-1.5, -1.0]])
    mask = torch.tensor([[1.0, 1.0]])
    rewards, kl_t = shaped_rewards(scores, logp, logq, mask, kl_coef=torch.tensor(0.5), estimator="k3")
    # r = logq - logp = [-0.5, 1.0]; k3 = [exp(-0.5) - 0.5, e - 2] = [0.1065307, 0.7182818]
    k = [math.exp(-0.5) - 0.5, math.e - 2.0]
    assert_close(kl_t, torch.tensor([k]))
    # rewards = [-0.5*0.1065307, -0.5*0.7182818 + 1] = [-0.0532653, 0.6408591]
    assert_close(rewards, torch.tensor([[-0.5 * k[0], -0.5 * k[1] + 1.0]]))


def test_shaped_rewards_loop_reference_and_no_grad():
    g = torch.Generator().manual_seed(0)
    b, t = 5, 7
    lengths = torch.tensor([7, 3, 0, 1, 5])
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    scores = torch.randn(b, generator=g).requires_grad_(True)
    logp = (-torch.rand(b, t, generator=g) * 3).requires_grad_(True)
    logq = -torch.rand(b, t, generator=g) * 3
    rewards, kl_t = shaped_rewards(scores, logp, logq, mask, kl_coef=0.2, estimator="k2")
    assert not rewards.requires_grad and not kl_t.requires_grad

    exp_r = torch.zeros(b, t)
    exp_k = torch.zeros(b, t)
    for i in range(b):
        n = int(lengths[i])
        for j in range(n):
            exp_k[i, j] = 0.5 * (logp[i, j].item() - logq[i, j].item()) ** 2
            exp_r[i, j] = -0.2 * exp_k[i, j]
        if n > 0:
            exp_r[i, n - 1] += scores[i].item()
    assert_close(kl_t, exp_k)
    assert_close(rewards, exp_r)
    assert_close(kl_t, torch.where(mask, kl(logp.detach(), logq, "k2"), 0.0))
