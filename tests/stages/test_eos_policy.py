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


def test_prompt_mean_baseline_ignores_dropped_answers(tmp_path, eos_model_dir, prompts_file, monkeypatch):
    """missing_eos=drop with score_baseline=prompt_mean: a prompt's baseline is the mean over its answers that
    enter the loss, so the valid answers of every prompt are centred on 0 (the dropped ones never move it)."""
    from rlaif.config import load_config
    from rlaif.configs import RootConfig
    from rlaif.stages import ppo

    from .test_ppo_smoke import ppo_overrides

    seen = []
    original = ppo.compute_advantages

    def capture(parts, cfg, kl_coef):
        seen.append((parts["scores"].clone(), parts["mask"].sum(1) > 0))
        return original(parts, cfg, kl_coef)

    monkeypatch.setattr(ppo, "compute_advantages", capture)
    cfg = load_config(RootConfig, None, ppo_overrides(
        tmp_path, eos_model_dir, prompts_file, "ppo.missing_eos=drop", "ppo.samples_per_prompt=4",
        "ppo.score_baseline=prompt_mean", "ppo.batch_size=8", "ppo.iterations=3", "ppo.micro_batch_size=4",
        "ppo.gradient_accumulation_steps=2", "ppo.generation.batch_size=8", "ppo.forward_batch_size=8"))
    ppo.train(cfg.run, cfg.ppo)
    mixed = 0
    for scores, valid in seen:
        for s, v in zip(scores.view(-1, 4), valid.view(-1, 4)):
            if v.any():
                assert abs(float(s[v].sum())) < 1e-5, (s, v)  # valid answers centred on their own mean
            assert (s[~v] == 0).all()  # dropped answers carry nothing
            mixed += bool(v.any() and not v.all())
    assert mixed > 0  # some prompt had ended and unended answers: the case the fix is about
