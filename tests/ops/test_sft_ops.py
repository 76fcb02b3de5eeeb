import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from rlaif.ops import IGNORE_INDEX, completion_labels, cosine_with_floor_lr, token_ce_sum

PEAK = 9e-6  # the seed's peak; floor = 0.3 * 9e-6 = 2.7e-6


def test_cosine_with_floor_hand():
    # W = 2 warm-up steps, T = 7 steps: the cosine runs over steps 2..6, p = (s - 2) / (7 - 2 - 1) = (s - 2) / 4
    lr = [cosine_with_floor_lr(s, 7, PEAK, 0.3, 2) for s in range(9)]
    assert lr[0] == pytest.approx(4.5e-6)  # warm-up: 9e-6 * 1/2
    assert lr[1] == pytest.approx(9e-6)  # warm-up: 9e-6 * 2/2 = the peak
    assert lr[2] == pytest.approx(9e-6)  # p = 0: cos(0) = 1 -> peak
    # p = 1/4: 2.7e-6 + 6.3e-6 * (1 + cos(pi/4)) / 2 = 2.7e-6 + 3.15e-6 * 1.70710678 = 8.0773864e-6
    assert lr[3] == pytest.approx(8.0773864e-6)
    assert lr[4] == pytest.approx(5.85e-6)  # p = 1/2: 2.7e-6 + 6.3e-6 / 2 (the middle)
    assert lr[6] == pytest.approx(2.7e-6)  # p = 1, the last step: the floor, 30 % of the peak
    assert lr[7] == pytest.approx(2.7e-6) and lr[8] == pytest.approx(2.7e-6)  # past the end: stays at the floor
    assert all(a >= b for a, b in zip(lr[1:], lr[2:]))  # non-increasing after the warm-up


def test_cosine_without_warmup_and_edge_cases():
    assert cosine_with_floor_lr(0, 5, 1.0, 0.3) == pytest.approx(1.0)  # no warm-up: the first step at the peak
    assert cosine_with_floor_lr(4, 5, 1.0, 0.3) == pytest.approx(0.3)  # last of 5 steps: the floor
    assert cosine_with_floor_lr(2, 5, 1.0, 0.3) == pytest.approx(0.65)  # p = 2/4: 0.3 + 0.7 / 2
    assert cosine_with_floor_lr(0, 1, 1.0, 0.3) == pytest.approx(1.0)  # a single step uses the peak
    assert {cosine_with_floor_lr(s, 6, 2.0, 1.0) for s in range(6)} == {2.0}  # floor ratio 1: constant


def test_completion_labels_from_lengths_not_pad_ids():
    pad = 0  # pad == eos == 0, as in the GGUF SmolLM2
    ids = torch.tensor([[5, 6, 7, 0, pad], [5, 6, 0, pad, pad]])
    prompt_lengths = torch.tensor([2, 1])
    lengths = torch.tensor([4, 3])
    labels = completion_labels(ids, prompt_lengths, lengths)
    x = IGNORE_INDEX
    # row 0: prompt 5 6 | answer 7 and the real end token 0 | pad; row 1: prompt 5 | answer 6 0 | pad pad
    assert labels.tolist() == [[x, x, 7, 0, x], [x, 6, 0, x, x]]


def test_token_ce_sum_hand():
    # vocab 2. logits [0, ln 3] -> p = [1/4, 3/4]; labels predict token 1 then 0 from positions 0 and 1
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    total, count = token_ce_sum(logits, labels)
    # position 0 -> label 1: -ln(3/4); position 1 -> label 0 with uniform logits: ln 2; position 2 predicts nothing
    assert_close(total, torch.tensor(-math.log(0.75) + math.log(2.0)))
    assert count.item() == 2.0
    labels_none = torch.full((1, 3), IGNORE_INDEX)
    total0, count0 = token_ce_sum(logits, labels_none)
    assert total0.item() == 0.0 and count0.item() == 0.0


def test_token_ce_sum_matches_a_loop_and_splits_add_up():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 11, generator=g)
    labels = torch.randint(0, 11, (4, 6), generator=g)
    labels[:, :2] = IGNORE_INDEX  # prompt
    labels[1, 4:] = IGNORE_INDEX  # padding
    total, count = token_ce_sum(logits, labels)
    loop, n = 0.0, 0
    for i in range(4):
        for j in range(5):
            if labels[i, j + 1] != IGNORE_INDEX:
                loop += -F.log_softmax(logits[i, j], -1)[labels[i, j + 1]].item()
                n += 1
    assert total.item() == pytest.approx(loop, rel=1e-5) and count.item() == n
    # micro-batches of 1 row divided by the whole count sum to the whole-batch mean (accumulation invariance)
    parts = sum(token_ce_sum(logits[i:i + 1], labels[i:i + 1])[0] for i in range(4)) / count
    assert_close(parts, total / count)
