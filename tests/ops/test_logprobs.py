import math

import torch
from torch.testing import assert_close

from rlaif.ops import entropy_from_logits, full_kl_from_logits, logprobs_from_logits

# position 0: logits [0, ln2, ln3] -> softmax [1/6, 2/6, 3/6]; position 1: uniform over 3
LOGITS = torch.tensor([[[0.0, math.log(2.0), math.log(3.0)], [0.0, 0.0, 0.0]]])  # (1, 2, 3)
TOKENS = torch.tensor([[2, 1]])  # (1, 2)


def test_logprobs_hand():
    out = logprobs_from_logits(LOGITS, TOKENS)
    # ln(3/6) = -ln 2 ; ln(1/3)
    assert_close(out, torch.tensor([[math.log(0.5), math.log(1.0 / 3.0)]]))
    assert out.dtype == torch.float32 and out.shape == (1, 2)


def test_logprobs_temperature_hand():
    out = logprobs_from_logits(LOGITS, TOKENS, temperature=2.0)
    # logits/2 = [0, ln sqrt2, ln sqrt3] -> probs proportional to [1, sqrt2, sqrt3]; uniform stays uniform
    p2 = math.sqrt(3.0) / (1.0 + math.sqrt(2.0) + math.sqrt(3.0))
    assert_close(out, torch.tensor([[math.log(p2), math.log(1.0 / 3.0)]]))


def test_logprobs_matches_log_softmax_with_temperature():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=g) * 4
    tokens = torch.randint(0, 11, (2, 3), generator=g)
    for temp in (1.0, 0.7, 1.3):
        ref = torch.log_softmax(logits / temp, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        assert_close(logprobs_from_logits(logits, tokens, temperature=temp), ref)


def test_logprobs_bf16_input_is_float32_and_not_modified():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 3, 7, generator=g) * 3).to(torch.bfloat16)
    before = logits.clone()
    tokens = torch.randint(0, 7, (2, 3), generator=g)
    out = logprobs_from_logits(logits, tokens, temperature=0.5)
    assert out.dtype == torch.float32
    ref = torch.log_softmax(logits.float() / 0.5, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert_close(out, ref)
    assert torch.equal(logits, before)  # the in-place division only touched the private float32 copy
    f32 = logits.float()
    f32_before = f32.clone()
    logprobs_from_logits(f32, tokens, temperature=0.5)
    assert torch.equal(f32, f32_before)


def test_logprobs_grad_hand():
    logits = LOGITS.clone().requires_grad_(True)
    logprobs_from_logits(logits, TOKENS).sum().backward()
    # d log p_k / d z = onehot(k) - softmax(z)
    # position 0: [0,0,1] - [1/6, 2/6, 3/6] ; position 1: [0,1,0] - [1/3, 1/3, 1/3]
    expected = torch.tensor([[[-1 / 6, -2 / 6, 1 - 3 / 6], [-1 / 3, 1 - 1 / 3, -1 / 3]]])
    assert_close(logits.grad, expected)
    # bf16 + temperature path (in-place division on the cast copy) still backpropagates: scaled by 1/T
    lb = LOGITS.to(torch.bfloat16).requires_grad_(True)
    logprobs_from_logits(lb, TOKENS, temperature=2.0).sum().backward()
    assert lb.grad is not None and torch.isfinite(lb.grad.float()).all()


def test_entropy_hand():
    out = entropy_from_logits(LOGITS)
    # position 0: -(1/6 ln 1/6 + 1/3 ln 1/3 + 1/2 ln 1/2) = 0.2986266 + 0.3662041 + 0.3465736 = 1.0114043
    h0 = (1 / 6) * math.log(6) + (1 / 3) * math.log(3) + 0.5 * math.log(2)
    # position 1: uniform over 3 -> ln 3 = 1.0986123
    assert_close(out, torch.tensor([[h0, math.log(3.0)]]))
    assert_close(out, torch.tensor([[1.0114043, 1.0986123]]))


def test_entropy_temperature_and_neg_inf():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=g) * 3
    ref = torch.distributions.Categorical(logits=logits / 0.8).entropy()
    assert_close(entropy_from_logits(logits, temperature=0.8), ref)
    # a -inf logit (vocabulary masking) has zero mass and contributes 0: [0, 0, -inf] -> ln 2
    z = torch.tensor([[[0.0, 0.0, -float("inf")]]], requires_grad=True)
    h = entropy_from_logits(z)
    assert_close(h, torch.tensor([[math.log(2.0)]]))
    h.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_full_kl_hand():
    ref = torch.zeros(1, 2, 3)  # uniform reference
    out = full_kl_from_logits(LOGITS, ref)
    # position 0: sum p ln(p / (1/3)) = 1/6 ln(1/2) + 1/3 ln(1) + 1/2 ln(3/2) = -0.1155245 + 0 + 0.2027326
    k0 = (1 / 6) * math.log(0.5) + 0.5 * math.log(1.5)
    # position 1: uniform vs uniform -> 0
    assert_close(out, torch.tensor([[k0, 0.0]]))
    assert_close(out, torch.tensor([[0.0872081, 0.0]]))
    assert_close(full_kl_from_logits(LOGITS, LOGITS), torch.zeros(1, 2), atol=1e-7, rtol=0)


def test_full_kl_matches_torch_and_temperature():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, 6, generator=g) * 2
    b = torch.randn(2, 3, 6, generator=g) * 2
    for temp in (1.0, 0.5):
        p = torch.distributions.Categorical(logits=a / temp)
        q = torch.distributions.Categorical(logits=b / temp)
        assert_close(full_kl_from_logits(a, b, temperature=temp), torch.distributions.kl_divergence(p, q))
    assert torch.all(full_kl_from_logits(a, b) >= -1e-6)


def test_full_kl_grad_only_to_logits():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(2, 3, 6, generator=g).requires_grad_(True)
    b = torch.randn(2, 3, 6, generator=g).requires_grad_(True)
    out = full_kl_from_logits(a, b)
    out.sum().backward()
    assert b.grad is None
    assert a.grad is not None and a.grad.abs().sum() > 0
    # analytic gradient of KL(softmax(a) || softmax(b)) w.r.t. a: p * ((logp - logq) - KL)
    logp = torch.log_softmax(a.detach(), -1)
    logq = torch.log_softmax(b.detach(), -1)
    p = logp.exp()
    expected = p * ((logp - logq) - out.detach().unsqueeze(-1))
    assert_close(a.grad, expected)


def test_full_kl_neg_inf_shared_support():
    # both put zero mass on token 2: KL over the first two tokens only; no NaN in value or grad
    z = torch.tensor([[[0.0, math.log(3.0), -float("inf")]]], requires_grad=True)  # p = [1/4, 3/4, 0]
    r = torch.tensor([[[0.0, 0.0, -float("inf")]]])  # q = [1/2, 1/2, 0]
    out = full_kl_from_logits(z, r)
    # 1/4 ln(1/2) + 3/4 ln(3/2) = -0.1732868 + 0.3040988 = 0.1308121
    assert_close(out, torch.tensor([[0.25 * math.log(0.5) + 0.75 * math.log(1.5)]]))
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
