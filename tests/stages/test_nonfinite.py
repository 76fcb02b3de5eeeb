"""NaN and inf stop a run: the message names the step or iteration, the CLI exits 1, the last good checkpoint
stays, and no NaN weights reach a checkpoint or the final model.

Real triggers, no patched code: a reward function that returns NaN/inf, a learning rate of 1e30 (the first
update makes the weights ~1e30, the next backward pass overflows) or 1e10 (the held-out forward pass
overflows), and a weight decay of 1e42 (AdamW's decay factor overflows: inf/NaN weights right after a step
whose loss and gradients were finite).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rm_data import QA, toy_pairs, write_jsonl
from safetensors.torch import load_file

from rlaif.checkpoint import list_checkpoints
from rlaif.cli import main as cli_main
from rlaif.finite import check_finite_weights, nonfinite_parameters
from rlaif.metrics import read_metrics

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")

NAN_REWARD = '''
calls = 0


def length_then_nan(prompts, responses):
    """Characters / 10 on the first call; from the second call on, row 1 is NaN and row 2 is inf."""
    global calls
    calls += 1
    scores = [len(r) / 10.0 for r in responses]
    if calls >= 2:
        scores[1], scores[2] = float("nan"), float("inf")
    return scores
'''


def stopped(capsys) -> str:
    """The one `rlaif: error:` line of a run the CLI stopped."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlaif: error:")]
    assert len(lines) == 1, lines
    assert "the last checkpoint is kept" in lines[0]
    return lines[0]


def steps_logged(out: Path, key: str) -> list[int]:
    return [r[key] for r in read_metrics(out)] if (out / "metrics.jsonl").exists() else []


def assert_finite_checkpoint(folder: Path) -> None:
    for f in folder.rglob("*.safetensors"):
        for name, t in load_file(str(f)).items():
            assert torch.isfinite(t).all(), (f, name)


# ---------------------------------------------------------------- the guard itself


def test_nonfinite_parameters_names_them_and_passes_huge_finite_weights():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    assert nonfinite_parameters(model) == []
    with torch.no_grad():
        model[0].weight.fill_(1e30)  # finite, but the fused norm overflows: the exact check must pass it
    assert nonfinite_parameters(model) == []
    with torch.no_grad():
        model[1].bias[0] = float("nan")
        model[0].weight[1, 2] = float("-inf")
    assert nonfinite_parameters(model) == ["0.weight", "1.bias"]
    with pytest.raises(FloatingPointError, match=r"^policy: non-finite weights after the optimizer step in "
                                                 r"0.weight, 1.bias$"):
        check_finite_weights(model, "policy: ")


# ---------------------------------------------------------------- sft


def sft_args(out: Path, model: str, data: str, *extra: str) -> list[str]:
    return ["sft", f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1",
            f"sft.model={model}", f"sft.data={data}", "sft.max_steps=3", "sft.micro_batch_size=2",
            "sft.gradient_accumulation_steps=1", "sft.checkpoint_every=1", *extra]


@pytest.fixture()
def sft_data(tmp_path) -> str:
    return write_jsonl(tmp_path / "sft.jsonl", [{"id": f"r{i}", "prompt": q, "completion": a}
                                                for i, (q, a) in enumerate(QA)])


@pytest.mark.parametrize("extra, message, good_steps", [
    # step 1 is finite (weights ~1e30); step 2's forward overflows
    (("sft.learning_rate=1e30",), "step 2: non-finite gradient norm nan", [1]),
    # the decay factor 1 - lr * wd overflows in the first update: inf/NaN weights, finite loss and gradients
    (("sft.learning_rate=0.001", "sft.weight_decay=1e42"), "step 1: non-finite weights after the optimizer step "
     "in model.embed_tokens.weight", []),
    # step 1's weights are finite (~1e10) but the held-out forward pass overflows: stop before checkpoint 1
    (("sft.learning_rate=1e10", "sft.eval_fraction=0.25", "sft.eval_every=1"), "step 1: held-out loss is nan",
     []),
])
def test_sft_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, sft_data, capsys,
                                                                        extra, message, good_steps):
    out = tmp_path / "run"
    assert cli_main(sft_args(out, tiny_model_dir, sft_data, *extra)) == 1
    assert message in stopped(capsys)
    assert [s for s, _ in list_checkpoints(out)] == good_steps  # the last good checkpoint, nothing after it
    assert [s for s in steps_logged(out, "step") if s > 0] == good_steps
    assert not (out / "model").exists()  # no final save of a poisoned model
    for _, folder in list_checkpoints(out):
        assert_finite_checkpoint(folder)


# ---------------------------------------------------------------- rm


def rm_args(out: Path, model: str, data: str, *extra: str) -> list[str]:
    return ["rm", f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1",
            f"rm.model={model}", f"rm.data={data}", "rm.max_steps=3", "rm.micro_batch_size=2",
            "rm.gradient_accumulation_steps=1", "rm.eval_fraction=0", "rm.checkpoint_every=1", *extra]


@pytest.mark.parametrize("extra, message, good_steps", [
    (("rm.learning_rate=0.001", "rm.weight_decay=1e42"), "step 1: non-finite weights after the optimizer step", []),
    (("rm.learning_rate=1e30", "rm.eval_fraction=0.25", "rm.eval_every=1"), "step 1: held-out loss is nan", []),
    # one step: finite weights (~1e30) but NaN rewards in the bias pass: the checkpoint stays, no model
    (("rm.learning_rate=1e30", "rm.max_steps=1"), "after step 1: rewards of the training answers are not finite",
     [1]),
])
def test_rm_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, capsys, extra,
                                                                      message, good_steps):
    data = write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(8))
    out = tmp_path / "run"
    assert cli_main(rm_args(out, tiny_model_dir, data, *extra)) == 1
    assert message in stopped(capsys)
    assert [s for s, _ in list_checkpoints(out)] == good_steps
    assert [s for s in steps_logged(out, "step") if s > 0] == good_steps
    assert not (out / "model").exists() and not (out / "summary.json").exists()
    for _, folder in list_checkpoints(out):
        assert_finite_checkpoint(folder)


# ---------------------------------------------------------------- ppo


def ppo_args(out: Path, model: str, prompts: str, reward: str, *extra: str) -> list[str]:
    return ["ppo", f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1",
            f"ppo.policy={model}", f"ppo.prompts={prompts}", f"ppo.reward.function={reward}", "ppo.iterations=3",
            "ppo.batch_size=4", "ppo.micro_batch_size=2", "ppo.gradient_accumulation_steps=2",
            "ppo.forward_batch_size=4", "ppo.generation.max_new_tokens=4", "ppo.generation.batch_size=4",
            "ppo.missing_eos=keep", "ppo.learning_rate=0.001", "ppo.value_learning_rate=0.001",
            "ppo.checkpoint_every=1", *extra]


def test_ppo_nan_reward_stops_at_its_iteration_and_the_checkpoint_resumes(tmp_path, tiny_model_dir, prompts_file,
                                                                          capsys):
    reward = tmp_path / "nan_reward.py"
    reward.write_text(NAN_REWARD, encoding="utf-8")
    out = tmp_path / "run"
    assert cli_main(ppo_args(out, tiny_model_dir, prompts_file, f"{reward}:length_then_nan")) == 1
    line = stopped(capsys)
    assert "iteration 2: reward source" in line and "non-finite scores at rows [1, 2]" in line
    assert [s for s, _ in list_checkpoints(out)] == [1] and steps_logged(out, "iteration") == [1]
    assert not (out / "policy").exists()
    # the kept checkpoint is a good one: with the reward fixed, the same folder continues from iteration 1
    assert cli_main(ppo_args(out, tiny_model_dir, prompts_file, f"{REWARDS}:length_reward")) == 0
    assert steps_logged(out, "iteration") == [1, 2, 3]
    assert_finite_checkpoint(out / "policy")


@pytest.mark.parametrize("extra, message", [
    (("ppo.weight_decay=1e42", "ppo.critic=separate"), "iteration 1: value: non-finite weights after the optimizer step"),
    (("ppo.learning_rate=1e30",), "iteration 2: policy: non-finite gradient norm nan"),
])
def test_ppo_nonfinite_update_stops_naming_the_iteration_and_model(tmp_path, tiny_model_dir, prompts_file, capsys,
                                                                   extra, message):
    out = tmp_path / "run"
    assert cli_main(ppo_args(out, tiny_model_dir, prompts_file, f"{REWARDS}:length_reward", *extra)) == 1
    assert message in stopped(capsys)
    good = [] if message.startswith("iteration 1") else [1]
    assert [s for s, _ in list_checkpoints(out)] == good and steps_logged(out, "iteration") == good
    assert not (out / "policy").exists()
    for _, folder in list_checkpoints(out):
        assert_finite_checkpoint(folder)
