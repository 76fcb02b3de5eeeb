"""Learning happens: PPO on the real SmolLM2-135M-Instruct against a *learned* reward model raises the reward
model's score on held-out prompts by more than its sampling noise.

The reward model is all-MiniLM-L6-v2 trained here (Bradley-Terry) on a style preference: a reference answer over
the same answer padded with generic filler sentences (tests/rm_data.py). PPO then trains on the training
prompts, and its held-out validation (ppo.validation) answers the held-out prompts with fixed seeds before
training and after it. The noise is the standard error of a difference of two means of as many answers.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
from rm_data import concise_pairs, write_jsonl

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.prompts import resolve_prompts_path
from rlaif.metrics import read_metrics
from rlaif.stages import ppo, rm

pytestmark = pytest.mark.slow


def test_ppo_raises_a_learned_reward_on_heldout_prompts(tmp_path):
    train = write_jsonl(tmp_path / "pairs.jsonl", concise_pairs(resolve_prompts_path("builtin:demo-train")))
    rm_cfg = load_config(RootConfig, None, [
        f"run.output_dir={tmp_path / 'rm'}", "run.progress=false", "run.seed=0", "rm.model=minilm-l6",
        f"rm.data={train}", "rm.eval_fraction=0.1", "rm.max_length=128", "rm.epochs=1", "rm.micro_batch_size=16",
        "rm.gradient_accumulation_steps=1", "rm.learning_rate=5e-5", "rm.eval_every=0", "rm.checkpoint_every=0",
    ])
    reward_model = rm.train(rm_cfg.run, rm_cfg.rm)
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["eval"]["accuracy"] >= 0.9

    out = tmp_path / "ppo"
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.precision=bf16",
        "ppo.policy=smollm2-135m-instruct", "ppo.prompts=builtin:demo-train", f"ppo.reward.model=[{reward_model}]",
        "ppo.reward.max_length=128", "ppo.critic=shared", "ppo.iterations=8", "ppo.batch_size=16",
        "ppo.samples_per_prompt=4", "ppo.score_baseline=prompt_mean", "ppo.micro_batch_size=4",
        "ppo.gradient_accumulation_steps=1", "ppo.ppo_epochs=2", "ppo.learning_rate=2e-5",
        "ppo.value_learning_rate=1e-4", "ppo.missing_eos=keep", "ppo.generation.max_new_tokens=48",
        "ppo.checkpoint_every=0", "ppo.validation.prompts=builtin:demo-heldout", "ppo.validation.max_prompts=24",
        "ppo.validation.samples_per_prompt=2", "ppo.validation.every=8", "ppo.validation.judge_win_rate=false",
    ])
    ppo.train(cfg.run, cfg.ppo)
    rows = read_metrics(out)
    initial = [json.loads(x)["reward"] for x in (out / "validation_initial.jsonl").read_text().splitlines()]
    noise = statistics.stdev(initial) * math.sqrt(2 / len(initial))  # SE of a difference of two means
    gain = rows[-1]["val_reward_gain"]
    assert gain > 2 * noise, (gain, noise, [r["reward_mean"] for r in rows])
