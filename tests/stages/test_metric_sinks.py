"""Metrics reach TensorBoard when the user asks (run.report_to=[tensorboard]), beside metrics.jsonl."""

from __future__ import annotations

import pytest

from rlaif.cli import main as cli_main
from rlaif.metrics import read_metrics


def test_tensorboard_receives_every_iteration(tmp_path, tiny_model_dir, prompts_file):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert cli_main([
        "ppo", f"run.output_dir={out}", "run.progress=false", "run.report_to=[tensorboard]",
        f"ppo.policy={tiny_model_dir}", f"ppo.prompts={prompts_file}",
        "ppo.reward.function=rlaif.rewards.examples:about_10_words", "ppo.iterations=2", "ppo.batch_size=4",
        "ppo.micro_batch_size=2", "ppo.gradient_accumulation_steps=2", "ppo.generation.max_new_tokens=4",
    ]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    jsonl = read_metrics(out)
    for tag in ("kl", "reward_mean", "policy_loss", "value_loss", "eos_rate"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([row[tag] for row in jsonl], rel=1e-6)


def test_unknown_sink_names_the_key(capsys):
    assert cli_main(["ppo", "run.report_to=[mlflow]"]) == 2
    assert "run.report_to" in capsys.readouterr().err
