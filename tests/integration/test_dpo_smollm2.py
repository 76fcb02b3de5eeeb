"""DPO on the real SmolLM2-135M-Instruct: after one step on four pairs, the implicit reward prefers the right answer
on pairs of held-out prompts (kept to one step: about a minute of CPU time on 2 cores).

Pairs from the shipped prompt sets: chosen = the prompt's own reference answer, rejected = the reference answer of
a prompt of another category (train.jsonl for training, heldout.jsonl for the held-out pairs).
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
from rlaif.stages import dpo

pytestmark = pytest.mark.slow


def test_smollm2_dpo_learns_heldout_preferences(tmp_path, smollm2_dir):
    train = write_jsonl(tmp_path / "train.jsonl", reference_pairs(resolve_prompts_path("builtin:demo-train"), 0)[:4])
    heldout = write_jsonl(tmp_path / "heldout.jsonl",
                          reference_pairs(resolve_prompts_path("builtin:demo-heldout"), 1)[:4])
    out = tmp_path / "dpo"
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.device=cpu", f"dpo.policy={smollm2_dir}",
        f"dpo.data={train}", f"dpo.eval_data={heldout}", "dpo.eval_fraction=0", "dpo.max_length=128",
        "dpo.max_steps=1", "dpo.micro_batch_size=4", "dpo.gradient_accumulation_steps=1", "dpo.learning_rate=3e-5",
        "dpo.min_lr_ratio=1.0", "dpo.beta=0.1", "dpo.eval_every=0", "dpo.eval_batch_size=8",
        "dpo.checkpoint_every=0",
    ])
    final = dpo.train(cfg.run, cfg.dpo)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1]
    before, after = rows[0], rows[-1]
    # before any update the policy is its reference: margin 0, loss log 2
    assert before["eval_reward_margin"] == 0.0 and before["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[1]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # the step starts there too
    # held-out prompts after one update: the implicit reward prefers the prompt's own answer (measured: margin
    # 0.32, accuracy 4/4, loss 0.553)
    assert after["eval_reward_margin"] > 0.1 and after["eval_accuracy"] >= 0.75, after
    assert after["eval_loss"] < math.log(2) - 0.05, after
    assert all(r["prompts_truncated"] == 0 and r["answers_truncated"] == 0 for r in rows[1:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval"]["reward_margin"] == after["eval_reward_margin"]
    assert (final / "model.safetensors").is_file()
