"""A judge as the PPO reward: the math of both modes, the cached baseline answers, and real PPO runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlaif.cli import main as cli_main
from rlaif.data.prompts import PromptRow
from rlaif.judges.function import FunctionJudge
from rlaif.metrics import read_metrics
from rlaif.rewards.judge_reward import JudgeReward
from rlaif.stages import ppo

from .test_ppo_smoke import ppo_overrides

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")
JUDGE = f"{REWARDS}:shorter_wins_first_biased"


def rows(*ids: str) -> list[PromptRow]:
    return [PromptRow(i, (("user", f"question {i}"),), reference=None) for i in ids]


def test_pairwise_reward_is_debiased_and_normalised():
    calls: list[list[str]] = []

    def baseline(new_rows: list[PromptRow]) -> list[str]:
        calls.append([r.id for r in new_rows])
        return ["a medium answer"] * len(new_rows)  # 15 characters

    reward = JudgeReward(FunctionJudge(JUDGE), "pairwise", baseline_fn=baseline)
    r = rows("p1", "p2", "p1")
    out = reward([x.text for x in r], ["short", "a much longer answer than that", "a medium answer"], rows=r)
    # shorter than the baseline: p_ab = 0.8 + 0.1 = 0.9 (policy first, shorter), p_ba = 0.2 + 0.1 = 0.3
    #   (baseline first, longer)  -> P(policy better) = ½(0.9 + 1 - 0.3) = 0.8 -> reward 2·0.8 - 1 = 0.6
    # longer: p_ab = 0.3, p_ba = 0.9 -> ½(0.3 + 1 - 0.9) = 0.2 -> -0.6
    # equal length: p_ab = p_ba = 0.6 -> ½(0.6 + 0.4) = 0.5 -> 0 (the position bias cancels)
    torch.testing.assert_close(out, torch.tensor([0.6, -0.6, 0.0]))
    assert calls == [["p1", "p2"]]  # one baseline answer per prompt id, generated once
    reward([x.text for x in r], ["x", "y", "z"], rows=r)
    assert calls == [["p1", "p2"]]  # cached for the run
    assert reward.last_stats["judge_win_rate_vs_reference"] == pytest.approx(1.0)  # 1-char answers all shorter


def test_pointwise_needs_a_pointwise_judge():
    with pytest.raises(ValueError, match="pointwise template"):
        JudgeReward(FunctionJudge(JUDGE), "pointwise")


def test_rows_are_required():
    reward = JudgeReward(FunctionJudge(JUDGE), "pairwise", baseline_fn=lambda rs: ["b"] * len(rs))
    with pytest.raises(ValueError, match="prompt rows"):
        reward(["q"], ["a"])


def test_ppo_with_pairwise_embedding_judge_reward(tmp_path, tiny_model_dir, prompts_file):
    """The real embedding judge on MiniLM compares each rollout with the reference model's greedy answer."""
    out = tmp_path / "run"
    args = ppo_overrides(out, tiny_model_dir, prompts_file, "ppo.reward.judge_mode=pairwise",
                         "ppo.reward.judge.backend=embedding", "run.threads=1")
    args = [a for a in args if not a.startswith("ppo.reward.function=")]
    assert cli_main(["ppo", *args]) == 0
    rows_ = read_metrics(out)
    assert [r["iteration"] for r in rows_] == [1, 2]
    for r in rows_:
        assert -1.0 <= r["reward_mean"] <= 1.0
        assert 0.0 <= r["judge_win_rate_vs_reference"] <= 1.0
        assert r["judge_consistency"] == 1.0  # the embedding judge is symmetric


def test_ppo_with_pointwise_local_judge_reward(tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    seen = {}
    original = ppo.judge_reward_sources

    def keep(cfg, models, device, amp):
        seen["sources"] = original(cfg, models, device, amp)
        return seen["sources"]

    monkeypatch.setattr(ppo, "judge_reward_sources", keep)
    out = tmp_path / "run"
    args = ppo_overrides(out, tiny_model_dir, prompts_file, "ppo.reward.judge_mode=pointwise",
                         "ppo.reward.judge.backend=local", f"ppo.reward.judge.model={tiny_model_dir}",
                         "ppo.reward.judge.template=pointwise", "ppo.missing_eos=keep", "run.threads=1",
                         "ppo.reward.judge.min_label_mass=0")  # a random tiny model: labels hold little mass
    args = [a for a in args if not a.startswith("ppo.reward.function=")]
    assert cli_main(["ppo", *args]) == 0
    (source,) = seen["sources"]
    assert source.mode == "pointwise" and source.name.startswith("judge[pointwise](local:")
    for r in read_metrics(out):
        assert -1.0 <= r["reward_mean"] <= 1.0 and r["reward_std"] > 0  # varied scores from the judge


def test_judge_mode_off_without_other_source_is_a_config_error(tmp_path, tiny_model_dir, prompts_file, capsys):
    args = [a for a in ppo_overrides(tmp_path, tiny_model_dir, prompts_file)
            if not a.startswith("ppo.reward.function=")]
    assert cli_main(["ppo", *args]) == 2
    assert "ppo.reward.judge_mode" in capsys.readouterr().err
