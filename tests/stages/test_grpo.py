"""`rlaif grpo` on tiny random models: smoke (finite, every weight moves, reference frozen), RLOO, resume equals
an uninterrupted run, the policy learns what the reward asks, bad config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rlaif.cli import main as cli_main
from rlaif.config import ConfigError, load_config
from rlaif.configs import RootConfig
from rlaif.metrics import read_metrics
from rlaif.stages import grpo, ppo

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")


def grpo_args(out, policy: str, prompts: str, *extra: str) -> list[str]:
    return [f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1",
            f"grpo.policy={policy}", f"grpo.prompts={prompts}", f"grpo.reward.function={REWARDS}:length_reward",
            "grpo.iterations=2", "grpo.prompts_per_iteration=2", "grpo.group_size=4", "grpo.micro_batch_size=2",
            "grpo.gradient_accumulation_steps=2", "grpo.forward_batch_size=8", "grpo.learning_rate=0.001",
            "grpo.missing_eos=keep", "grpo.generation.max_new_tokens=8", "grpo.generation.batch_size=8",
            "grpo.checkpoint_every=0", *extra]


@pytest.mark.parametrize("advantage", ["group", "rloo"])
def test_grpo_smoke(tmp_path, tiny_model_dir, prompts_file, monkeypatch, advantage):
    from transformers import AutoModelForCausalLM

    seen = {}
    original = ppo.load_policy_and_reference

    def keep(*args):
        models = original(*args)
        seen["models"] = models
        seen["p0"] = {k: v.detach().clone() for k, v in models.policy.named_parameters()}
        seen["r0"] = {k: v.detach().clone() for k, v in models.reference.state_dict().items()}
        return models

    monkeypatch.setattr(grpo, "load_policy_and_reference", keep)
    out = tmp_path / advantage
    assert cli_main(["grpo", *grpo_args(out, tiny_model_dir, prompts_file, f"grpo.advantage={advantage}")]) == 0
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        for k in ("reward_mean", "policy_loss", "kl", "kl_loss", "clipfrac", "entropy", "group_std_mean"):
            assert math.isfinite(r[k]), (k, r[k])
    models = seen["models"]
    assert models.value is None  # no critic
    for k, v in models.policy.named_parameters():
        assert not torch.equal(v, seen["p0"][k]), f"{k} did not change"
    for k, v in models.reference.state_dict().items():
        assert torch.equal(v, seen["r0"][k]), f"reference {k} changed"
    AutoModelForCausalLM.from_pretrained(out / "policy")


def test_grpo_resume_equals_uninterrupted(tmp_path, eos_model_dir, prompts_file):
    split, whole = tmp_path / "split", tmp_path / "whole"
    common = ("grpo.checkpoint_every=1", "grpo.missing_eos=penalty", "grpo.generation.temperature=0.9")
    assert cli_main(["grpo", *grpo_args(split, eos_model_dir, prompts_file, *common)]) == 0
    assert cli_main(["grpo", *grpo_args(split, eos_model_dir, prompts_file, *common, "grpo.iterations=3")]) == 0
    assert cli_main(["grpo", *grpo_args(whole, eos_model_dir, prompts_file, *common, "grpo.iterations=3")]) == 0
    a, b = read_metrics(split), read_metrics(whole)
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for k in ("reward_mean", "kl", "policy_loss", "eos_rate", "response_length"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-6), (ra["iteration"], k)


def test_grpo_learns_to_avoid_eos_when_the_reward_says_so(tmp_path, eos_model_dir):
    """The sign of the whole chain: constant score 1 when the answer ends, 2 when it runs out of tokens."""
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={tmp_path}", "run.progress=false", f"grpo.policy={eos_model_dir}",
        f"grpo.reward.function={REWARDS}:constant_one", "grpo.missing_eos=penalty", "grpo.missing_eos_penalty=2.0",
        "grpo.prompts=builtin:demo-train", "grpo.iterations=6", "grpo.prompts_per_iteration=4", "grpo.group_size=4",
        "grpo.micro_batch_size=8", "grpo.gradient_accumulation_steps=1", "grpo.epochs=2",
        "grpo.learning_rate=0.003", "grpo.generation.max_new_tokens=8", "grpo.checkpoint_every=0",
    ])
    grpo.train(cfg.run, cfg.grpo)
    eos = [r["eos_rate"] for r in read_metrics(tmp_path)]
    assert eos[0] >= 0.5, eos
    assert max(eos[-2:]) <= eos[0] - 0.4, eos


def test_grpo_bad_config(tmp_path, tiny_model_dir, prompts_file, capsys):
    with pytest.raises(ConfigError, match="grpo.group_size"):
        load_config(RootConfig, None, ["grpo.group_size=1"])
    with pytest.raises(ConfigError, match="grpo.prompts_per_iteration"):
        load_config(RootConfig, None, ["grpo.prompts_per_iteration=3", "grpo.group_size=3"])
    args = [a for a in grpo_args(tmp_path, tiny_model_dir, prompts_file) if "reward.function" not in a]
    assert cli_main(["grpo", *args]) == 2
    assert "grpo.reward" in capsys.readouterr().err
