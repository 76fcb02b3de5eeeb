"""A real reward model: all-MiniLM-L6-v2 (`minilm-l6`) learns which answer belongs to a question, then drives PPO.

Pairs from the shipped prompt sets: chosen = the prompt's own reference answer, rejected = the reference answer of
a prompt of another category. Train pairs from train.jsonl (220), held-out pairs from heldout.jsonl (60).
"""

from __future__ import annotations

import json
import math

import pytest
from rm_data import reference_pairs, write_jsonl

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.prompts import resolve_prompts_path
from rlaif.metrics import read_metrics
from rlaif.rewards.sources import ModelReward
from rlaif.stages import ppo, rm

pytestmark = pytest.mark.slow


def test_minilm_rm_learns_heldout_preferences_and_drives_ppo(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", reference_pairs(resolve_prompts_path("builtin:demo-train"), 0))
    heldout = write_jsonl(tmp_path / "heldout.jsonl",
                          reference_pairs(resolve_prompts_path("builtin:demo-heldout"), 1))
    out = tmp_path / "rm"
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.device=cpu", "rm.model=minilm-l6",
        f"rm.data={train}", f"rm.eval_data={heldout}", "rm.eval_fraction=0", "rm.max_length=128", "rm.epochs=1",
        "rm.micro_batch_size=16", "rm.gradient_accumulation_steps=1", "rm.learning_rate=5e-5",
        "rm.warmup_steps=2", "rm.eval_every=0", "rm.eval_batch_size=32", "rm.checkpoint_every=0",
    ])
    final = rm.train(cfg.run, cfg.rm)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(15))  # 220 pairs / 16 per step = 14 steps
    before, after = rows[0]["eval_accuracy"], rows[-1]["eval_accuracy"]
    summary = json.loads((out / "summary.json").read_text())
    assert after >= 0.9, (before, after, summary)
    assert summary["eval"]["accuracy"] == after and summary["eval"]["pairs"] == 60
    assert summary["eval"]["margin_mean"] > 0 and summary["eval"]["reward_std"] > 0
    assert all(r["inputs_at_max_length"] == 0 for r in rows[1:])  # 128 tokens hold every pair

    # the saved RM, read by PPO's ModelReward: chosen answers of the training pairs average 0
    scorer = ModelReward(str(final), max_length=128, batch_size=32)
    assert scorer.format == "pair"
    pairs = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    chosen = scorer([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    assert abs(chosen.mean().item()) < 1e-3

    # ... and drives a short PPO run of the tiny policy (an encoder RM is a reward, not a critic)
    ppo_out = tmp_path / "ppo"
    pcfg = load_config(RootConfig, None, [
        f"run.output_dir={ppo_out}", "run.progress=false", "run.seed=0", "run.device=cpu",
        f"ppo.policy={tiny_model_dir}", "ppo.prompts=builtin:demo-heldout", f"ppo.reward.model=[{final}]",
        "ppo.reward.max_length=128", "ppo.iterations=2", "ppo.batch_size=4", "ppo.micro_batch_size=2",
        "ppo.gradient_accumulation_steps=2", "ppo.forward_batch_size=4", "ppo.generation.max_new_tokens=8",
        "ppo.checkpoint_every=0",
    ])
    ppo.train(pcfg.run, pcfg.ppo)
    prows = read_metrics(ppo_out)
    assert [r["iteration"] for r in prows] == [1, 2]
    for r in prows:
        assert r["reward_mean"] is not None and math.isfinite(r["reward_mean"])
        assert r["reward_std"] is not None and math.isfinite(r["reward_std"])
