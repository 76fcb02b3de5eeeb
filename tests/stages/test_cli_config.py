"""CLI and config errors (exit 2, one line naming the key / file:line), prompt-file errors, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlaif.cli import main as cli_main
from rlaif.config import ConfigError, load_config
from rlaif.configs import RootConfig
from rlaif.data.jsonl import DataError
from rlaif.data.prompts import load_prompts
from rlaif.metrics import read_metrics

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")


def _error_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip()]


# ---------------------------------------------------------------- config errors


def test_unknown_key_exits_2_naming_it(capsys):
    assert cli_main(["ppo", "ppo.kl_coeff=1"]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    assert "'ppo.kl_coeff'" in lines[0] and lines[0].startswith("rlaif: error:")


@pytest.mark.parametrize("override, key", [
    ("ppo.kl_coef=abc", "ppo.kl_coef"),
    ("ppo.iterations=2.5", "ppo.iterations"),
    ("ppo.kl_mode=sideways", "ppo.kl_mode"),
    ("run.progress=maybe", "run.progress"),
    ("ppo.generation.max_new_tokens=[1, 2]", "ppo.generation.max_new_tokens"),
    ("ppo.batch_size=6", "ppo.batch_size"),  # not a multiple of micro x accumulation
    ("ppo.generation.top_p=0.9", "ppo.generation.top_p"),  # samples a nucleus, scores the full softmax
    ("ppo.validation.every=0", "ppo.validation.every"),
])
def test_wrong_value_exits_2_naming_the_key(capsys, override, key):
    assert cli_main(["ppo", override, f"ppo.reward.function={REWARDS}:constant_one"]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    assert f"'{key}'" in lines[0]


def test_grpo_nucleus_sampling_is_refused_as_off_policy(capsys):
    assert cli_main(["grpo", "grpo.generation.top_p=0.95", f"grpo.reward.function={REWARDS}:constant_one"]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "'grpo.generation.top_p'" in lines[0] and "off-policy" in lines[0]


def test_missing_reward_is_a_config_error(capsys):
    assert cli_main(["ppo"]) == 2
    (line,) = _error_lines(capsys)
    assert "ppo.reward" in line


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(f"ppo:\n  kl_coef: 1\n  reward:\n    function: {REWARDS}:constant_one\n", encoding="utf-8")
    cfg = load_config(RootConfig, f, ["ppo.kl_coef=0.25"])
    assert cfg.ppo.kl_coef == 0.25 and cfg.ppo.reward.function.endswith(":constant_one")
    assert isinstance(load_config(RootConfig, f).ppo.kl_coef, float)  # ints widen to floats
    f.write_text("ppo:\n  bogus: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'ppo.bogus'"):
        load_config(RootConfig, f)


def test_scientific_notation_float_override():
    cfg = load_config(RootConfig, None, ["ppo.learning_rate=1e-3", f"ppo.reward.function={REWARDS}:constant_one"])
    assert cfg.ppo.learning_rate == pytest.approx(0.001)


def test_stage_help_lists_its_own_keys_and_all_lists_every_stages(capsys):
    assert cli_main(["rm", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) < 150
    text = "\n".join(lines)
    assert "rm.learning_rate (float) = 1e-05" in text and "run.output_dir" in text and "  ppo." not in text
    assert cli_main(["rm", "--help", "--all"]) == 0
    text = capsys.readouterr().out
    assert "ppo.kl_coef (float) = 0.05" in text and "dpo.beta" in text and "rm.margin" in text
    assert cli_main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    assert "pipeline.algorithm" in text and "  rm." not in text and "rlaif demo --help --all" in text


def test_help_lists_every_key(capsys):
    assert cli_main(["ppo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "ppo.kl_coef (float) = 0.05" in out
    for key in ("run.output_dir", "ppo.generation.max_new_tokens", "ppo.reward.function", "ppo.missing_eos"):
        assert key in out


def test_nonexistent_model_path_exits_2(capsys, tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    rc = cli_main(["ppo", f"run.output_dir={tmp_path / 'out'}", f"ppo.policy={missing}",
                   f"ppo.reward.function={REWARDS}:constant_one"])
    assert rc == 2
    lines = [line for line in _error_lines(capsys) if line.startswith("rlaif: error:")]
    assert len(lines) == 1 and str(missing) in lines[0] and "not a local folder" in lines[0]


def test_model_folder_without_config_exits_2(capsys, tmp_path):
    folder = tmp_path / "empty-model"
    folder.mkdir()
    rc = cli_main(["ppo", f"run.output_dir={tmp_path / 'out'}", f"ppo.policy={folder}",
                   f"ppo.reward.function={REWARDS}:constant_one"])
    assert rc == 2
    assert any("no config.json" in line for line in _error_lines(capsys))


def test_missing_hub_like_model_exits_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["ppo", f"run.output_dir={tmp_path / 'out'}", "ppo.policy=nonexistent-org/nonexistent-model",
                   f"ppo.reward.function={REWARDS}:constant_one"])
    assert rc == 2
    assert any("nonexistent-org/nonexistent-model" in line for line in _error_lines(capsys))


def test_bad_reward_spec_exits_2(capsys, tmp_path, tiny_model_dir, prompts_file):
    rc = cli_main(["ppo", f"run.output_dir={tmp_path}", f"ppo.policy={tiny_model_dir}",
                   f"ppo.prompts={prompts_file}", f"ppo.reward.function={REWARDS}:nope"])
    assert rc == 2
    lines = [line for line in _error_lines(capsys) if line.startswith("rlaif: error:")]
    assert len(lines) == 1 and f"{REWARDS}:nope" in lines[0]


# ---------------------------------------------------------------- prompt files


def _write(tmp_path, data: bytes | str, name: str = "p.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return p


GOOD = '{"id": "a", "prompt": "Hello?"}\n'


@pytest.mark.parametrize("content, line, needle", [
    (GOOD + '{"id": "b", "prompt": "oops"\n', 2, "malformed JSON"),
    (GOOD + '{"id": "b", "question": "Hi?"}\n', 2, "missing field 'prompt'"),
    (GOOD + '{"id": "b", "prompt": 3}\n', 2, "field 'prompt' must be a string"),
    (GOOD + '{"id": "b", "prompt": "   "}\n', 2, "field 'prompt' is empty"),
    (GOOD + GOOD, 2, "field 'id' duplicates 'a' from line 1"),
    (GOOD + "\n" + '{"id": "a", "prompt": "x"}\n', 3, "field 'id' duplicates 'a' from line 1"),
    (GOOD + '[1, 2]\n', 2, "expected a JSON object"),
    (GOOD + '{"id": "b", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", '
            '"content": "y"}]}\n', 2, "field 'messages' must end with a user turn"),
    (GOOD + '{"id": "b", "messages": [{"role": "user"}]}\n', 2, "missing field 'content'"),
    (GOOD + '{"id": "b", "prompt": "x", "reference": 5}\n', 2, "field 'reference' must be a string"),
    (GOOD + '{"id": [1], "prompt": "x"}\n', 2, "field 'id'"),
])
def test_malformed_prompts_name_file_line_and_field(tmp_path, content, line, needle):
    p = _write(tmp_path, content)
    with pytest.raises(DataError) as e:
        load_prompts(str(p))
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line}:"), msg
    assert needle in msg


def test_non_utf8_prompt_file(tmp_path):
    p = _write(tmp_path, GOOD.encode() + b'{"id": "b", "prompt": "caf\xe9"}\n')
    with pytest.raises(DataError) as e:
        load_prompts(str(p))
    assert str(e.value).startswith(f"{p}:2:") and "UTF-8" in str(e.value)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_prompt_file(tmp_path, content):
    p = _write(tmp_path, content)
    with pytest.raises(DataError, match="no prompts") as e:
        load_prompts(str(p))
    assert str(p) in str(e.value)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(str(tmp_path / "nope.jsonl"))


def test_good_prompt_file_and_builtin(tmp_path):
    p = _write(tmp_path, GOOD + '{"messages": [{"role": "system", "content": "Be brief."}, '
                                '{"role": "user", "content": "Why?"}], "reference": "Because."}\n')
    rows = load_prompts(str(p))
    assert [r.id for r in rows] == ["a", "line-2"]
    assert rows[1].last_user == "Why?" and rows[1].reference == "Because."
    assert rows[1].text == "System: Be brief.\n\nUser: Why?"  # what a judge or RM reads: the whole conversation
    assert rows[1].as_chat()[0] == {"role": "system", "content": "Be brief."}
    assert len(load_prompts("builtin:demo-train")) > 0


def test_malformed_prompts_via_cli(capsys, tmp_path, tiny_model_dir):
    p = _write(tmp_path, GOOD + '{"id": "b", "prompt": "oops"\n')
    rc = cli_main(["ppo", f"run.output_dir={tmp_path / 'out'}", f"ppo.policy={tiny_model_dir}",
                   f"ppo.prompts={p}", f"ppo.reward.function={REWARDS}:constant_one", "run.progress=false"])
    assert rc == 2
    lines = [line for line in _error_lines(capsys) if line.startswith("rlaif: error:")]
    assert len(lines) == 1 and f"{p}:2:" in lines[0] and "malformed JSON" in lines[0]


# ---------------------------------------------------------------- resume


def _resume_args(out, policy, prompts, iterations: int) -> list[str]:
    return [
        "ppo", f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.resume=auto",
        f"ppo.policy={policy}", f"ppo.prompts={prompts}", f"ppo.reward.function={REWARDS}:length_reward",
        f"ppo.iterations={iterations}", "ppo.batch_size=4", "ppo.micro_batch_size=1",
        "ppo.gradient_accumulation_steps=2", "ppo.forward_batch_size=4", "ppo.generation.max_new_tokens=8",
        "ppo.learning_rate=0.001", "ppo.value_learning_rate=0.001", "ppo.checkpoint_every=1",
        "ppo.kl_target=0.5", "ppo.kl_horizon=100", "ppo.missing_eos=drop",
        "ppo.critic=separate", "ppo.old_logprobs=recompute",  # the most state to resume: critic model + optimizer
    ]


def test_resume_matches_an_uninterrupted_run(tmp_path, eos_model_dir, prompts_file):
    """2 iterations, then the same command with iterations=3: the result equals one 3-iteration run.

    Uses the adaptive KL controller, dropped rollouts, the EOS-prone model and two minibatches per iteration
    (so the minibatch shuffle matters) so that the KL-controller state, prompt position, shuffle RNG, sampling
    RNG, optimizer moments and both models all have to be restored.
    """
    from safetensors.torch import load_file

    split, whole = tmp_path / "split", tmp_path / "whole"
    assert cli_main(_resume_args(split, eos_model_dir, prompts_file, 2)) == 0
    first = read_metrics(split)
    assert [r["iteration"] for r in first] == [1, 2]
    ckpts = sorted(p.name for p in (split / "checkpoints").iterdir())
    assert ckpts == ["step-00000001", "step-00000002"]  # every iteration (checkpoint_every=1), the last too

    assert cli_main(_resume_args(split, eos_model_dir, prompts_file, 3)) == 0
    resumed = read_metrics(split)
    assert [r["iteration"] for r in resumed] == [1, 2, 3]

    assert cli_main(_resume_args(whole, eos_model_dir, prompts_file, 3)) == 0
    straight = read_metrics(whole)
    assert [r["iteration"] for r in straight] == [1, 2, 3]

    keys = ("reward_mean", "kl", "kl_coef", "eos_rate", "valid_rows", "response_length", "value_mean",
            "return_mean", "policy_loss", "value_loss")
    for it in range(3):
        for k in keys:
            a, b = resumed[it].get(k), straight[it].get(k)
            if a is None or b is None:
                assert a is None and b is None, (it + 1, k, a, b)
            else:
                assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (it + 1, k, a, b)
    # the redone iteration 2 also equals the first attempt's iteration 2
    for k in ("reward_mean", "kl", "eos_rate"):
        assert math.isclose(first[1][k], resumed[1][k], rel_tol=1e-4, abs_tol=1e-6), k
    assert any(r.get("policy_loss") is not None for r in straight[1:])  # updates really happened

    a = load_file(str(split / "policy" / "model.safetensors"))
    b = load_file(str(whole / "policy" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)

    # the checkpoint holds everything a resume needs
    ck = split / "checkpoints" / "step-00000002"
    for name in ("policy/model.safetensors", "value/model.safetensors", "optimizers.pt", "rng.pt",
                 "shuffle_rng.pt", "trainer_state.json", "COMPLETE"):
        assert (ck / name).is_file(), name
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["iteration"] == 2 and state["prompt_position"] == 8
    assert state["kl_controller"]["value"] == pytest.approx(straight[2]["kl_coef"], rel=1e-6)


def test_fresh_run_in_a_used_folder_does_not_duplicate_metrics(tmp_path, tiny_model_dir, prompts_file):
    args = ["ppo", f"run.output_dir={tmp_path}", "run.progress=false", f"ppo.policy={tiny_model_dir}",
            f"ppo.prompts={prompts_file}", f"ppo.reward.function={REWARDS}:constant_one", "ppo.iterations=2",
            "ppo.batch_size=4", "ppo.micro_batch_size=2", "ppo.gradient_accumulation_steps=2",
            "ppo.generation.max_new_tokens=2", "ppo.checkpoint_every=0"]
    assert cli_main(args) == 0
    assert cli_main([*args, "run.resume=never"]) == 0
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]


@pytest.mark.parametrize("args, key", [
    (["ppo", "run.fsdp=true", "ppo.lora.r=4"], "run.fsdp"),  # LoRA adapters are not sharded
    (["sft", "run.fsdp=true", "run.shard_optimizer=true"], "run.fsdp"),  # FSDP already shards the moments
])
def test_fsdp_where_it_does_not_apply_exits_2(capsys, tmp_path, tiny_model_dir, prompts_file, args, key):
    extra = ([f"ppo.policy={tiny_model_dir}", f"ppo.prompts={prompts_file}",
              f"ppo.reward.function={REWARDS}:constant_one"] if args[0] == "ppo" else [f"sft.model={tiny_model_dir}"])
    assert cli_main([*args, f"run.output_dir={tmp_path / 'run'}", *extra]) == 2
    lines = _error_lines(capsys)
    assert any(f"'{key}'" in line for line in lines), lines


def test_resume_with_other_lora_or_critic_settings_exits_2_naming_the_key(capsys, tmp_path, tiny_model_dir,
                                                                        prompts_file):
    """A checkpoint written with LoRA off and the default shared critic: resuming it with LoRA on, or with a
    separate critic, stops with exit 2 naming the key (not a missing-file traceback), and the checkpoint is kept."""
    base = ["ppo", f"run.output_dir={tmp_path}", "run.progress=false", f"ppo.policy={tiny_model_dir}",
            f"ppo.prompts={prompts_file}", f"ppo.reward.function={REWARDS}:constant_one", "ppo.batch_size=4",
            "ppo.micro_batch_size=2", "ppo.gradient_accumulation_steps=2", "ppo.generation.max_new_tokens=2",
            "ppo.checkpoint_every=1"]
    assert cli_main([*base, "ppo.iterations=1"]) == 0
    capsys.readouterr()
    for extra, key in ((["ppo.lora.r=2"], "ppo.lora.r"), (["ppo.critic=separate"], "ppo.critic")):
        assert cli_main([*base, "ppo.iterations=2", *extra]) == 2
        lines = _error_lines(capsys)
        assert any(f"'{key}'" in line and "run.resume=never" in line for line in lines), lines
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1]
    assert cli_main([*base, "ppo.iterations=2"]) == 0  # the same settings resume
    assert [r["iteration"] for r in read_metrics(tmp_path)] == [1, 2]
