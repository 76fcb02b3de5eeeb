"""PPO moves a policy towards what the reward asks for (the sign of the whole chain is right).

A tiny random Llama that usually ends its answers within 8 tokens; the reward prefers answers that do not
end (score 1 when EOS comes, 2 when the budget runs out): within a few iterations the EOS rate must fall.
A wrong sign anywhere (advantages, ratio, log-prob alignment, GAE direction) makes it rise or stall.
"""

from __future__ import annotations

from pathlib import Path

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.metrics import read_metrics
from rlaif.stages import ppo

REWARDS = Path(__file__).resolve().parents[1] / "stages" / "rewards_for_tests.py"


def test_ppo_learns_to_avoid_eos_when_the_reward_says_so(tmp_path, eos_model_dir):
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={tmp_path}", "run.progress=false", f"ppo.policy={eos_model_dir}",
        f"ppo.reward.function={REWARDS}:constant_one", "ppo.missing_eos=penalty", "ppo.missing_eos_penalty=2.0",
        "ppo.prompts=builtin:demo-train", "ppo.iterations=6", "ppo.batch_size=16", "ppo.micro_batch_size=8",
        "ppo.gradient_accumulation_steps=1", "ppo.ppo_epochs=2", "ppo.learning_rate=0.003",
        "ppo.value_learning_rate=0.01", "ppo.generation.max_new_tokens=8", "ppo.checkpoint_every=0",
    ])
    ppo.train(cfg.run, cfg.ppo)
    rows = read_metrics(tmp_path)
    eos = [r["eos_rate"] for r in rows]
    score = [r["score_mean"] for r in rows]
    assert eos[0] >= 0.5, eos  # the starting policy mostly ends its answers ...
    assert max(eos[-2:]) <= eos[0] - 0.4, eos  # ... and learns not to
    assert min(score[-2:]) > score[0] + 0.4, score
