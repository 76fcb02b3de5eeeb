"""The held-out validation inside ppo / grpo (stages/validation.py) on a tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.prompts import load_prompts
from rlaif.metrics import read_metrics
from rlaif.stages import grpo, ppo
from rlaif.stages.validation import ValidationConfig, training_prompts

from .test_ppo_smoke import REWARDS, ppo_overrides

VAL_IDS = ["p1", "p5"]


def _split(tmp_path: Path, prompts_file: str) -> tuple[str, str]:
    """(validation file with VAL_IDS, training file without them)."""
    rows = [json.loads(line) for line in Path(prompts_file).read_text().splitlines()]
    val, rest = tmp_path / "val.jsonl", tmp_path / "rest.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] in VAL_IDS))
    rest.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] not in VAL_IDS))
    return str(val), str(rest)


def _validation(stage: str, val: str) -> list[str]:
    return [f"{stage}.validation.prompts={val}", f"{stage}.validation.every=2",
            f"{stage}.validation.samples_per_prompt=2", f"{stage}.validation.judge.backend=function",
            f"{stage}.validation.judge.function={REWARDS}:longer_wins"]


def _scored(path: Path) -> list[list[str]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_ppo_validation_is_held_out_logged_and_leaves_training_unchanged(tmp_path, tiny_model_dir, prompts_file,
                                                                         monkeypatch):
    val, rest = _split(tmp_path, prompts_file)
    questions = {json.loads(x)["id"]: json.loads(x)["prompt"] for x in Path(prompts_file).read_text().splitlines()}
    val_q = {questions[i] for i in VAL_IDS}
    common = ["ppo.iterations=3", f"ppo.reward.function={REWARDS}:recording_length_reward"]
    monkeypatch.setenv("RLAIF_TEST_SEEN", str(tmp_path / "seen-on.jsonl"))
    on = load_config(RootConfig, None, ppo_overrides(tmp_path / "on", tiny_model_dir, prompts_file, *common,
                                                     *_validation("ppo", val)))
    ppo.train(on.run, on.ppo)
    calls = _scored(tmp_path / "seen-on.jsonl")
    # call 0: the initial policy's validation answers; then per iteration a training batch, plus a validation
    # batch after iterations 2 (every=2) and 3 (the last): the training batches never hold a validation prompt
    assert [set(c) == set(questions[i] for i in VAL_IDS) for c in calls] == [True, False, False, True, False, True]
    assert not val_q & set(sum((calls[i] for i in (1, 2, 4)), []))
    rows = read_metrics(tmp_path / "on")
    assert ["val_reward_mean" in r for r in rows] == [False, True, True]
    initial = [json.loads(x) for x in (tmp_path / "on" / "validation_initial.jsonl").read_text().splitlines()]
    assert [r["id"] for r in initial] == ["p1", "p1", "p5", "p5"]
    initial_reward = sum(r["reward"] for r in initial) / len(initial)
    assert initial_reward == pytest.approx(sum(len(r["answer"]) / 10 for r in initial) / len(initial), abs=1e-5)
    for r in rows[1:]:
        assert r["val_reward_gain"] == pytest.approx(r["val_reward_mean"] - initial_reward, abs=1e-5)
        assert r["val_reward_gain_se"] >= 0.0  # over the 4 paired answers (ops.paired_difference)
        assert 0.0 <= r["val_win_rate"] <= 1.0 and r["val_length"] > 0 and 0 <= r["val_eos_rate"] <= 1
    # validation samples under its own RNG: training on the remaining prompts without validation is identical
    monkeypatch.setenv("RLAIF_TEST_SEEN", str(tmp_path / "seen-off.jsonl"))
    off = load_config(RootConfig, None, ppo_overrides(tmp_path / "off", tiny_model_dir, rest, *common))
    ppo.train(off.run, off.ppo)
    assert _scored(tmp_path / "seen-off.jsonl") == [calls[i] for i in (1, 2, 4)]
    a = load_file(str(tmp_path / "on" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "off" / "policy" / "model.safetensors"))
    assert all(a[k].equal(b[k]) for k in a)
    for r_on, r_off in zip(rows, read_metrics(tmp_path / "off")):
        assert r_on["reward_mean"] == r_off["reward_mean"] and r_on["policy_loss"] == r_off["policy_loss"]


def test_grpo_validation_logged_and_resumes_with_the_same_initial_answers(tmp_path, tiny_model_dir, prompts_file,
                                                                          monkeypatch):
    from tests.conftest import interrupt_after_checkpoint

    val, _ = _split(tmp_path, prompts_file)
    args = [f"run.output_dir={tmp_path / 'run'}", "run.progress=false", "run.seed=0", f"grpo.policy={tiny_model_dir}",
            f"grpo.prompts={prompts_file}", f"grpo.reward.function={REWARDS}:length_reward", "grpo.iterations=4",
            "grpo.prompts_per_iteration=2", "grpo.group_size=2", "grpo.micro_batch_size=2",
            "grpo.gradient_accumulation_steps=2", "grpo.generation.max_new_tokens=8", "grpo.learning_rate=0.001",
            "grpo.checkpoint_every=2", *_validation("grpo", val)]
    cfg = load_config(RootConfig, None, args)
    interrupt_after_checkpoint(monkeypatch, grpo, 2)
    with pytest.raises(KeyboardInterrupt):
        grpo.train(cfg.run, cfg.grpo)
    first = (tmp_path / "run" / "validation_initial.jsonl").read_text()
    monkeypatch.undo()
    grpo.train(cfg.run, cfg.grpo)  # resumes at iteration 3; the initial answers are read back, not redrawn
    assert (tmp_path / "run" / "validation_initial.jsonl").read_text() == first
    rows = read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    assert ["val_win_rate" in r for r in rows] == [False, True, False, True]
    assert all("reward_mean" in r and "score_mean" in r for r in rows)


def test_training_prompts_leave_validation_ids_out(tmp_path, prompts_file):
    val, _ = _split(tmp_path, prompts_file)
    kept = training_prompts(load_prompts(prompts_file), ValidationConfig(prompts=val), "ppo")
    assert [r.id for r in kept] == ["p0", "p2", "p3", "p4", "p6", "p7"]
    assert len(training_prompts(load_prompts(prompts_file), ValidationConfig(), "ppo")) == 8
