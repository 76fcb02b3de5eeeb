"""What happens to rollouts that end without EOS: penalty, drop (the seed) or keep."""

from __future__ import annotations

import torch

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.stages.ppo import apply_eos_policy

RAW = torch.tensor([0.5, 2.0, -0.3])
ENDED = torch.tensor([True, False, True])


def _cfg(*overrides: str):
    return load_config(RootConfig, None, ["ppo.reward.function=x:y", *overrides]).ppo


def test_penalty_replaces_the_score_of_unfinished_rollouts():
    scores, valid = apply_eos_policy(RAW, ENDED, _cfg("ppo.missing_eos=penalty", "ppo.missing_eos_penalty=-1.5"))
    assert scores.tolist() == [0.5, -1.5, -0.30000001192092896]
    assert valid.tolist() == [True, True, True]


def test_drop_keeps_scores_but_removes_unfinished_rows_from_the_update():
    scores, valid = apply_eos_policy(RAW, ENDED, _cfg("ppo.missing_eos=drop"))
    assert torch.equal(scores, RAW)
    assert valid.tolist() == [True, False, True]


def test_keep_leaves_everything_alone():
    scores, valid = apply_eos_policy(RAW, ENDED, _cfg("ppo.missing_eos=keep"))
    assert torch.equal(scores, RAW)
    assert valid.tolist() == [True, True, True]


def test_clip_applies_before_the_eos_policy():
    scores, _ = apply_eos_policy(RAW, ENDED, _cfg("ppo.missing_eos=keep", "ppo.reward.clip=1.0"))
    assert scores.tolist() == [0.5, 1.0, -0.30000001192092896]
