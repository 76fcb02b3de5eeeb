import math

import torch
from torch.testing import assert_close

from rlaif.ops import bradley_terry_loss, ppo_policy_loss, ppo_value_loss

# ---------------------------------------------------------------- ppo_policy_loss

# 2x3 batch, clip_eps = 0.2 ; ratios chosen by hand, position (1, 2) is padding with NaN garbage.
RATIOS = [[1.0, 1.5, 0.5], [1.1, 0.5, 1.0]]
ADV = torch.tensor([[1.0, 1.0, -1.0], [-2.0, 1.0, float("nan")]])
PMASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
OLD = torch.full((2, 3), -1.0)


def _policy_inputs():
    lp = OLD + torch.log(torch.tensor(RATIOS))
    lp[1, 2] = float("nan")
    return lp.requires_grad_(True)


def test_policy_loss_hand_value_grad_and_stats():
    lp = _policy_inputs()
    loss, stats = ppo_policy_loss(lp, OLD, ADV, PMASK, clip_eps=0.2)
    # token (A, ratio): pg1 = -A*r, pg2 = -A*clip(r, 0.8, 1.2), per-token = max(pg1, pg2)
    # (0,0) A=+1 r=1.0 : pg1 = -1.0, pg2 = -1.0 -> -1.0   unclipped, d/dlogp = -A*r = -1.0
    # (0,1) A=+1 r=1.5 : pg1 = -1.5, pg2 = -1.2 -> -1.2   CLIPPED (A>0, r>1+eps): grad 0
    # (0,2) A=-1 r=0.5 : pg1 = +0.5, pg2 = +0.8 -> +0.8   CLIPPED (A<0, r<1-eps): grad 0
    # (1,0) A=-2 r=1.1 : pg1 = +2.2, pg2 = +2.2 -> +2.2   inside the clip range, grad = -A*r = 2.2
    # (1,1) A=+1 r=0.5 : pg1 = -0.5, pg2 = -0.8 -> -0.5   unclipped (A>0, r<1-eps), grad = -0.5
    # sum = -1.0 - 1.2 + 0.8 + 2.2 - 0.5 = 0.3 ; 5 tokens -> loss 0.06
    assert_close(loss, torch.tensor(0.06))
    loss.backward()
    # gradient = per-token derivative / 5 ; the padded NaN position gets exactly 0
    assert_close(lp.grad, torch.tensor([[-1.0 / 5, 0.0, 0.0], [2.2 / 5, -0.5 / 5, 0.0]]))
    # clipfrac: 2 of 5 tokens have pg2 > pg1
    assert_close(stats["clipfrac"], torch.tensor(0.4))
    # approx_kl = mean 0.5*log(r)^2 = 0.5*(0 + ln1.5^2 + ln0.5^2 + ln1.1^2 + ln0.5^2)/5
    akl = 0.5 * (math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2 + math.log(1.1) ** 2) / 5
    assert_close(stats["approx_kl"], torch.tensor(akl))
    assert_close(stats["ratio_mean"], torch.tensor(4.6 / 5))  # (1 + 1.5 + 0.5 + 1.1 + 0.5)/5 = 0.92
    assert_close(stats["ratio_max"], torch.tensor(1.5))
    # max |r - 1| over real tokens: |1-1|, |1.5-1|, |0.5-1|, |1.1-1|, |0.5-1| -> 0.5 (the NaN pad is ignored)
    assert_close(stats["ratio_dev_max"], torch.tensor(0.5))
    for v in stats.values():
        assert v.dim() == 0 and not v.requires_grad


def test_policy_loss_zero_grad_when_clipped_single_tokens():
    # A > 0 and ratio > 1 + eps: zero gradient
    lp = torch.tensor([[math.log(1.5)]], requires_grad=True)
    loss, _ = ppo_policy_loss(lp, torch.zeros(1, 1), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    loss.backward()
    assert_close(loss, torch.tensor(-2.4))  # max(-2*1.5, -2*1.2) = -2.4
    assert_close(lp.grad, torch.zeros(1, 1))
    # A < 0 and ratio < 1 - eps: zero gradient
    lp = torch.tensor([[math.log(0.5)]], requires_grad=True)
    loss, _ = ppo_policy_loss(lp, torch.zeros(1, 1), torch.tensor([[-3.0]]), torch.ones(1, 1), 0.2)
    loss.backward()
    assert_close(loss, torch.tensor(2.4))  # max(3*0.5, 3*0.8) = 2.4
    assert_close(lp.grad, torch.zeros(1, 1))


def test_policy_loss_detaches_targets():
    lp = torch.randn(2, 3, requires_grad=True)
    old = torch.randn(2, 3, requires_grad=True)
    adv = torch.randn(2, 3, requires_grad=True)
    loss, _ = ppo_policy_loss(lp, old, adv, torch.ones(2, 3), 0.2)
    loss.backward()
    assert lp.grad is not None and old.grad is None and adv.grad is None


def _random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    b, t = 4, 6
    lengths = torch.tensor([6, 1, 4, 2])  # halves [0:1] and [1:4] hold 6 and 7 tokens
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    a = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    c = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    d = torch.randn(b, t, generator=g, dtype=torch.float64)
    return a, c, d, mask


def test_policy_loss_normalizer_split_equals_full_batch():
    lp, old, adv, mask = _random_batch(0)
    full_lp = lp.clone().requires_grad_(True)
    full, _ = ppo_policy_loss(full_lp, old, adv, mask, 0.2)
    full.backward()

    total = int(mask.sum())  # 13 tokens ; first half has 6, second half 7 (rows 0 | 1..3)
    split_lp = lp.clone().requires_grad_(True)
    parts = [slice(0, 1), slice(1, 4)]
    summed = sum(
        ppo_policy_loss(split_lp[s], old[s], adv[s], mask[s], 0.2, normalizer=total)[0] for s in parts
    )
    summed.backward()
    assert_close(summed, full)
    assert_close(split_lp.grad, full_lp.grad)
    # a 0-dim tensor normalizer works the same
    t_norm = torch.tensor(float(total), dtype=torch.float64)
    summed_t = sum(ppo_policy_loss(lp[s], old[s], adv[s], mask[s], 0.2, normalizer=t_norm)[0] for s in parts)
    assert_close(summed_t, full.detach())
    # whereas averaging per-half token means is NOT the full-batch loss (different token counts)
    naive = sum(ppo_policy_loss(lp[s], old[s], adv[s], mask[s], 0.2)[0] for s in parts) / 2
    assert not torch.allclose(naive, full.detach())


def test_policy_loss_normalizer_hand_and_stats_ignore_it():
    lp = _policy_inputs()
    loss, stats = ppo_policy_loss(lp, OLD, ADV, PMASK, clip_eps=0.2, normalizer=10.0)
    assert_close(loss, torch.tensor(0.03))  # same masked sum 0.3, divided by 10
    assert_close(stats["clipfrac"], torch.tensor(0.4))  # still the plain masked mean over 5 tokens


# ---------------------------------------------------------------- ppo_value_loss

# column 3 is padding with garbage.
V = torch.tensor([[1.0, 2.0, 3.0, float("nan")]])
VOLD = torch.tensor([[1.5, 1.5, 3.0, float("inf")]])
RET = torch.tensor([[2.0, 3.0, 2.0, float("nan")]])
VMASK = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)


def test_value_loss_hand_clipped():
    v = V.clone().requires_grad_(True)
    loss, stats = ppo_value_loss(v, VOLD, RET, VMASK, clip_eps=0.2)
    # t0: V=1, Vold=1.5 -> Vclip = clip(1, 1.3, 1.7) = 1.3 ; (1-2)^2 = 1.0 ; (1.3-2)^2 = 0.49 -> 1.0
    # t1: V=2, Vold=1.5 -> Vclip = 1.7 ; (2-3)^2 = 1.0 ; (1.7-3)^2 = 1.69 -> 1.69 (clipped branch)
    # t2: V=3, Vold=3   -> Vclip = 3   ; (3-2)^2 = 1.0 ; (3-2)^2 = 1.0 -> 1.0 (tie, not clipped)
    # loss = 0.5 * (1.0 + 1.69 + 1.0) / 3 = 0.615
    assert_close(loss, torch.tensor(0.615))
    loss.backward()
    # grads: t0 (V-R)/3 = -1/3 ; t1 clipped branch is constant in V -> 0 ; t2 (V-R)/3 = 1/3 ; pad 0
    assert_close(v.grad, torch.tensor([[-1.0 / 3, 0.0, 1.0 / 3, 0.0]]))
    assert_close(stats["vf_clipfrac"], torch.tensor(1.0 / 3))
    assert_close(stats["value_mean"], torch.tensor(2.0))  # (1+2+3)/3
    assert_close(stats["value_error"], torch.tensor(1.0))  # (1+1+1)/3
    for s in stats.values():
        assert s.dim() == 0 and not s.requires_grad


def test_value_loss_unclipped_return_std_normalizer():
    loss, stats = ppo_value_loss(V, VOLD, RET, VMASK, clip_eps=None)
    # 0.5 * (1 + 1 + 1) / 3 = 0.5
    assert_close(loss, torch.tensor(0.5))
    assert_close(stats["vf_clipfrac"], torch.tensor(0.0))
    # return_std = 2: both errors halved before squaring -> squares / 4
    # clipped: 0.5 * (0.25 + 0.4225 + 0.25) / 3 = 0.15375
    loss, stats = ppo_value_loss(V, VOLD, RET, VMASK, clip_eps=0.2, return_std=2.0)
    assert_close(loss, torch.tensor(0.15375))
    assert_close(stats["value_error"], torch.tensor(1.0))  # stat is not divided by return_std
    loss, _ = ppo_value_loss(V, VOLD, RET, VMASK, clip_eps=None, return_std=torch.tensor(2.0))
    assert_close(loss, torch.tensor(0.125))  # 0.5 * 0.75 / 3
    # normalizer 6: 0.5 * 3.69 / 6 = 0.3075
    loss, _ = ppo_value_loss(V, VOLD, RET, VMASK, clip_eps=0.2, normalizer=6)
    assert_close(loss, torch.tensor(0.3075))


def test_value_loss_normalizer_split_equals_full_batch():
    v, old, ret, mask = _random_batch(1)
    full_v = v.clone().requires_grad_(True)
    full, _ = ppo_value_loss(full_v, old, ret, mask, 0.1)
    full.backward()
    total = int(mask.sum())
    split_v = v.clone().requires_grad_(True)
    summed = sum(
        ppo_value_loss(split_v[s], old[s], ret[s], mask[s], 0.1, normalizer=total)[0]
        for s in (slice(0, 1), slice(1, 4))
    )
    summed.backward()
    assert_close(summed, full)
    assert_close(split_v.grad, full_v.grad)


def test_value_loss_detaches_targets():
    v = torch.randn(2, 3, requires_grad=True)
    old = torch.randn(2, 3, requires_grad=True)
    ret = torch.randn(2, 3, requires_grad=True)
    loss, _ = ppo_value_loss(v, old, ret, torch.ones(2, 3), 0.2)
    loss.backward()
    assert v.grad is not None and old.grad is None and ret.grad is None


# ---------------------------------------------------------------- bradley_terry_loss


def _softplus(x):
    return math.log1p(math.exp(x))  # -logsigmoid(d) = softplus(-d)


def test_bradley_terry_hand():
    chosen = torch.tensor([2.0, 0.0])
    rejected = torch.tensor([1.0, 0.0])
    # d = [1, 0] -> -logsigmoid: [log(1+e^-1), log 2] = [0.3132617, 0.6931472] ; mean 0.5032044
    assert_close(bradley_terry_loss(chosen, rejected), torch.tensor((_softplus(-1) + math.log(2)) / 2))
    assert_close(bradley_terry_loss(chosen, rejected), torch.tensor(0.5032044))
    # margin 1.0: d = [0, -1] -> [log 2, log(1+e)] = [0.6931472, 1.3132617] ; mean 1.0032044
    assert_close(bradley_terry_loss(chosen, rejected, margin=1.0), torch.tensor(1.0032044))
    # margin tensor [0.5, -1]: d = [0.5, 1] -> [log(1+e^-0.5), log(1+e^-1)] = [0.4740770, 0.3132617]
    out = bradley_terry_loss(chosen, rejected, margin=torch.tensor([0.5, -1.0]))
    assert_close(out, torch.tensor((_softplus(-0.5) + _softplus(-1.0)) / 2))


def test_bradley_terry_soft_labels_hand():
    chosen = torch.tensor([2.0, 0.0])
    rejected = torch.tensor([1.0, 0.0])
    p = torch.tensor([0.8, 0.5])
    # row 0, d=1: 0.8*log(1+e^-1) + 0.2*log(1+e) = 0.8*0.3132617 + 0.2*1.3132617 = 0.5132617
    # row 1, d=0: 0.5*log2 + 0.5*log2 = 0.6931472 ; mean = 0.6032044
    assert_close(bradley_terry_loss(chosen, rejected, label_prob=p), torch.tensor(0.6032044))
    # p = 1 equals the hard-label loss
    ones = torch.ones(2)
    assert_close(bradley_terry_loss(chosen, rejected, label_prob=ones), bradley_terry_loss(chosen, rejected))


def test_bradley_terry_extreme_and_grad():
    chosen = torch.tensor([1000.0, -1000.0], requires_grad=True)
    rejected = torch.zeros(2)
    loss = bradley_terry_loss(chosen, rejected)
    # d = [1000, -1000]: -logsigmoid = [~0, 1000] ; mean 500
    assert torch.isfinite(loss)
    assert_close(loss, torch.tensor(500.0))
    loss.backward()
    # d/dchosen of -logsigmoid(d)/2 = -sigmoid(-d)/2 = [-0/2, -1/2]
    assert_close(chosen.grad, torch.tensor([0.0, -0.5]))
    soft = bradley_terry_loss(chosen.detach(), rejected, label_prob=torch.tensor([0.3, 0.7]))
    # -logsigmoid(1000) ~ 0, -logsigmoid(-1000) = 1000
    # row 0, d=+1000: 0.3*0 + 0.7*1000 = 700 ; row 1, d=-1000: 0.7*1000 + 0.3*0 = 700 ; mean 700
    assert torch.isfinite(soft)
    assert_close(soft, torch.tensor(700.0))
    # gradient hand-check at moderate values: d = 0 -> -sigmoid(0)/b = -0.5/1
    c = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(c, torch.tensor([0.0])).backward()
    assert_close(c.grad, torch.tensor([-0.5]))
