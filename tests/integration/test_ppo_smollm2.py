"""PPO on the real SmolLM2-135M-Instruct raises a *learned* reward model's score on held-out prompts.

The whole RLAIF chain at a small budget, with the demo's PPO settings (`rlaif demo`'s config):
1) label: SmolLM2 answers 32 training prompts 4 times (32 new tokens), and a judge compares every pair in both
   orders. The judge is a Python function with a clear preference, fewer words (`fewer_words` below, soft
   labels), so the test measures the chain rather than a judge's quality;
2) rm: a MiniLM Bradley-Terry reward model learns those labels;
3) ppo: 8 iterations of 4 prompts x 4 answers against that reward model, with the held-out validation: 16
   validation prompts (never trained on) x 2 answers with fixed seeds, scored by the reward model before the
   first iteration and after the last.
The bar is the item of issue 16: the held-out reward gain beyond twice its standard error over the paired
answers (`val_reward_gain_se`). Measured 2026-12-07 here (seeds 0 / 1 / 2): +0.240 +- 0.060, +0.395 +- 0.076,
+0.962 +- 0.178; reward-model held-out accuracy 0.90 / 0.95 / 0.84; about 5 min per run (bench/RESULTS.md).

Earlier designs whose reward model was trained on reference answers (not on SmolLM2's own samples) were too
flat over SmolLM2's answers to move (bench/RESULTS.md); a judge's labels on the policy's own answers are what
the demo trains on too.
"""

from __future__ import annotations

import math

import pytest

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.metrics import read_metrics
from rlaif.pipeline import demo_config_path, run_pipeline

pytestmark = pytest.mark.slow

ITERATIONS = 8


def fewer_words(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """A pairwise judge: P(first better) = sigmoid((words(second) - words(first)) / 3)."""
    return [1.0 / (1.0 + math.exp((len(f.split()) - len(s.split())) / 3.0)) for f, s in zip(firsts, seconds)]


def test_ppo_raises_a_learned_reward_models_held_out_score(tmp_path, smollm2_dir):
    cfg = load_config(RootConfig, demo_config_path(), [
        f"run.output_dir={tmp_path}", "run.progress=false", "run.seed=0",
        "pipeline.stages=[label,rm,align]", "pipeline.report=false", f"sft.model={smollm2_dir}",
        # 1) 32 prompts x 4 answers, 6 pairs each, judged in both orders
        "label.max_prompts=32", "label.max_new_tokens=32", "label.judge.backend=function",
        f"label.judge.function={__file__}:fewer_words",
        # 2) 4 epochs at 2e-4 (the demo's 2 at 5e-5 are for 384 labels; on 192 the scores stay flat)
        "rm.epochs=4", "rm.learning_rate=0.0002",
        # 3) the demo's PPO settings, fewer and shorter answers; the held-out signal after the last iteration
        f"ppo.iterations={ITERATIONS}", "ppo.generation.max_new_tokens=32", "ppo.checkpoint_every=0",
        "ppo.validation.max_prompts=16", "ppo.validation.samples_per_prompt=2",
        f"ppo.validation.every={ITERATIONS}", "ppo.validation.judge_win_rate=false",
    ])
    run_pipeline(cfg)

    labels = (tmp_path / "label" / "preferences.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(labels) >= 180  # 32 x 6 pairs, less any the judge called even in both orders
    rows = read_metrics(tmp_path / "ppo")
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    last = rows[-1]
    gain, se = last["val_reward_gain"], last["val_reward_gain_se"]
    # the policy moved: its answers differ from the initial policy's, so the paired noise is not zero ...
    assert se > 0.0, last
    # ... and the reward model scores the held-out answers higher, beyond twice the noise of these samples
    assert gain > 2.0 * se, (gain, se)
    assert all(math.isfinite(r["kl"]) for r in rows)
