import math

import pytest
import torch
from torch.testing import assert_close

from rlaif.ops import masked_mean, masked_sum, masked_var, whiten, whiten_with

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[True, True, False], [True, False, False]])


def test_masked_sum_hand():
    # selected elements: 1, 2 (row 0) and 4 (row 1)
    assert_close(masked_sum(X, M), torch.tensor(7.0))  # 1 + 2 + 4
    assert_close(masked_sum(X, M, dim=-1), torch.tensor([3.0, 4.0]))  # [1+2, 4]
    assert_close(masked_sum(X, M, dim=0), torch.tensor([5.0, 2.0, 0.0]))  # [1+4, 2, nothing]


def test_masked_mean_hand():
    assert_close(masked_mean(X, M), torch.tensor(7.0 / 3.0))  # (1+2+4)/3
    assert_close(masked_mean(X, M, dim=-1), torch.tensor([1.5, 4.0]))  # [(1+2)/2, 4/1]
    # column 2 is empty -> 0 by convention (not NaN)
    assert_close(masked_mean(X, M, dim=0), torch.tensor([2.5, 2.0, 0.0]))  # [(1+4)/2, 2/1, 0]


def test_float_mask_is_a_weight():
    w = torch.tensor([[0.5, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # sum = 0.5*1 + 1*2 + 1*4 = 6.5 ; weight total = 2.5 ; mean = 6.5/2.5 = 2.6
    assert_close(masked_sum(X, w), torch.tensor(6.5))
    assert_close(masked_mean(X, w), torch.tensor(2.6))
    # a 0/1 float mask matches the bool mask
    assert_close(masked_mean(X, M.float()), masked_mean(X, M))


def test_nan_inf_outside_mask_do_not_leak():
    x = X.clone()
    x[0, 2] = float("nan")
    x[1, 1] = float("inf")
    x[1, 2] = -float("inf")
    assert_close(masked_sum(x, M), torch.tensor(7.0))
    assert_close(masked_mean(x, M), torch.tensor(7.0 / 3.0))
    assert_close(masked_mean(x, M.float()), torch.tensor(7.0 / 3.0))
    assert_close(masked_mean(x, M, dim=-1), torch.tensor([1.5, 4.0]))
    assert_close(masked_var(x, M), torch.tensor(7.0 / 3.0))  # see test_masked_var_hand
    # gradient is 1/3 on the 3 selected entries and exactly 0 (not NaN) elsewhere
    xg = x.clone().requires_grad_(True)
    masked_mean(xg, M).backward()
    assert_close(xg.grad, M.float() / 3.0)


def test_masked_var_hand():
    # elements {1, 2, 4}: mean 7/3, deviations -4/3, -1/3, 5/3, squares 16/9 + 1/9 + 25/9 = 42/9
    assert_close(masked_var(X, M, unbiased=False), torch.tensor(42.0 / 9.0 / 3.0))  # 14/9
    assert_close(masked_var(X, M, unbiased=True), torch.tensor(42.0 / 9.0 / 2.0))  # 7/3
    # matches torch.var on the selected elements
    assert_close(masked_var(X, M), X[M].var())


def test_masked_var_unbiased_needs_two():
    one = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(ValueError):
        masked_var(X, one, unbiased=True)
    assert_close(masked_var(X, one, unbiased=False), torch.tensor(0.0))  # single element: var 0


def test_whiten_hand():
    x = torch.tensor([[1.0, 3.0, 9.0], [5.0, float("nan"), float("inf")]])
    # masked {1, 3, 5}: mean 3, deviations -2, 0, 2, sum of squares 8, unbiased var 8/2 = 4, std 2
    out = whiten(x, M)
    assert_close(out, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))  # (x-3)/2 inside, 0 outside
    # shift_mean=False adds the mean 3 back inside the mask: [-1+3, 0+3, 0 ; 1+3, 0, 0]
    out = whiten(x, M, shift_mean=False)
    assert_close(out, torch.tensor([[2.0, 3.0, 0.0], [4.0, 0.0, 0.0]]))


def test_whiten_with_given_statistics_hand():
    x = torch.tensor([[1.0, 3.0, 9.0], [5.0, float("nan"), float("inf")]])
    # mean 1 and var 16 - 1e-8 (std 4) given from outside, e.g. a batch spread over processes:
    # inside the mask (1-1)/4 = 0, (3-1)/4 = 0.5, (5-1)/4 = 1; outside exactly 0
    out = whiten_with(x, M, torch.tensor(1.0), torch.tensor(16.0 - 1e-8))
    assert_close(out, torch.tensor([[0.0, 0.5, 0.0], [1.0, 0.0, 0.0]]))
    # shift_mean=False adds the given mean back inside: 1, 1.5, 2
    out = whiten_with(x, M, torch.tensor(1.0), torch.tensor(16.0 - 1e-8), shift_mean=False)
    assert_close(out, torch.tensor([[1.0, 1.5, 0.0], [2.0, 0.0, 0.0]]))


def test_whiten_mean0_var1_zero_outside():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g) * 5 + 3
    lengths = torch.tensor([7, 3, 5, 1])
    mask = torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)
    x = torch.where(mask, x, torch.full_like(x, float("nan")))  # garbage outside
    out = whiten(x, mask)
    assert_close(masked_mean(out, mask), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert_close(masked_var(out, mask), torch.tensor(1.0), atol=1e-5, rtol=1e-5)
    assert torch.all(out[~mask] == 0)
    # reference: (x - mean) / std on the selected elements
    sel = x[mask]
    assert_close(out[mask], (sel - sel.mean()) / sel.std())
    assert math.isfinite(out.sum().item())
