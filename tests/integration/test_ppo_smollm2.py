"""PPO on the real SmolLM2-135M-Instruct learns a verifiable reward while KL to the reference stays bounded.

The reward (`rlaif.rewards.examples:about_10_words`: 1 at ten words, 0 at twenty; answers that run out of
tokens without EOS score -1) asks for much shorter answers than the model gives (about 20 words here). One
prompt, sampled 16 times per iteration, so the differences between rollouts come from the policy's own choices
and the signal is clean enough to learn in a few CPU minutes (measured 2026-12-07 with the shared critic and
sampling log-probs: -0.17 -> 0.69 in 6 iterations, KL up to 8 nats, 26 -> 15 tokens; 3.7 min here, 8.7 with a
separate critic).
"""

from __future__ import annotations

import json

import pytest

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.metrics import read_metrics
from rlaif.stages import ppo

pytestmark = pytest.mark.slow

ITERATIONS = 6


def test_smollm2_learns_a_verifiable_reward(tmp_path, smollm2_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "sea", "prompt": "Describe the sea in two sentences."}) + "\n")
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={tmp_path / 'run'}", "run.progress=false", "run.seed=0",
        "ppo.policy=smollm2-135m-instruct", f"ppo.prompts={prompts}",
        "ppo.reward.function=rlaif.rewards.examples:about_10_words", "ppo.missing_eos=penalty",
        f"ppo.iterations={ITERATIONS}", "ppo.batch_size=16", "ppo.micro_batch_size=4",
        "ppo.gradient_accumulation_steps=1", "ppo.ppo_epochs=2", "ppo.learning_rate=0.00001",
        "ppo.value_learning_rate=0.0001", "ppo.generation.max_new_tokens=32", "ppo.checkpoint_every=0",
        "ppo.critic=shared", "ppo.old_logprobs=sampling",  # the demo's critic and log-probs; half the time
    ])
    ppo.train(cfg.run, cfg.ppo)
    rows = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    reward = [r["score_mean"] for r in rows]  # after the EOS penalty: what PPO optimises
    kl = [r["kl"] for r in rows]
    first, last = reward[0], sum(reward[-2:]) / 2
    # the improvement, not a time: the last iterations score well above the first ...
    assert last > first + 0.3, reward
    # ... while the policy stays near its reference (sequence KL in nats, k1 estimate)
    assert kl[0] == pytest.approx(0.0, abs=1e-4)
    assert max(kl) < 10.0, kl
    # ... and it got there by answering shorter, as asked
    assert rows[-1]["response_length"] < rows[0]["response_length"] - 4
