"""Bad input the other test files do not already cover, through the real CLI: one `rlaif: error:` line that names
the key, file or path, and exit status 2; prompts longer than the token budget are cut on the left and counted.

Covered elsewhere (see RELIABILITY.md): malformed JSONL, missing / mistyped / empty fields, duplicate ids,
empty files and non-UTF-8 lines of prompt, SFT and preference files (test_cli_config.py, test_sft.py,
test_rm.py), unknown keys of the ppo / sft / rm sections, a missing PPO policy.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from rm_data import QA, toy_pairs, write_jsonl

from rlaif.cli import STAGES
from rlaif.cli import main as cli_main
from rlaif.metrics import read_metrics

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")
JUDGE = "def longer(prompts, firsts, seconds):\n    return [0.5 for _ in firsts]\n"
LONG = "Please read this carefully. " * 40  # ~200 tokens


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlaif: error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture()
def inputs(tmp_path, tiny_model_dir, prompts_file) -> dict:
    judge = tmp_path / "judge.py"
    judge.write_text(JUDGE, encoding="utf-8")
    return {
        "sft": [f"sft.model={tiny_model_dir}", "sft.data=" + write_jsonl(
            tmp_path / "sft.jsonl", [{"id": f"r{i}", "prompt": q, "completion": a} for i, (q, a) in enumerate(QA)])],
        "rm": [f"rm.model={tiny_model_dir}", "rm.data=" + write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(4))],
        "ppo": [f"ppo.policy={tiny_model_dir}", f"ppo.prompts={prompts_file}",
                f"ppo.reward.function={REWARDS}:length_reward"],
        "label": [f"label.policy={tiny_model_dir}", f"label.prompts={prompts_file}", "label.judge.backend=function",
                  f"label.judge.function={judge}:longer"],
    }


def with_key(args: list[str], key: str, value: str) -> list[str]:
    return [a for a in args if not a.startswith(key + "=")] + [f"{key}={value}"]


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_unknown_key_exits_2_naming_it_in_every_stage(stage, capsys):
    assert cli_main([stage, "run.output_dirr=x"]) == 2
    assert "unknown config key 'run.output_dirr'" in error_line(capsys)


def test_unknown_nested_key_in_a_yaml_file_is_named_with_its_full_path(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ppo:\n  generation:\n    max_new_token: 4\n", encoding="utf-8")
    assert cli_main(["ppo", "--config", str(cfg)]) == 2
    assert "unknown config key 'ppo.generation.max_new_token'" in error_line(capsys)


@pytest.mark.parametrize("content, needle", [
    (b"ppo:\n  kl_coef: 0.1\n  note: caf\xe9\n", "is not valid YAML"),
    (b"- just\n- a list\n", "must hold a mapping"),
    (b"ppo: [unclosed\n", "is not valid YAML"),
])
def test_unreadable_config_file_exits_2_naming_it(tmp_path, capsys, content, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(content)
    assert cli_main(["ppo", "--config", str(cfg)]) == 2
    line = error_line(capsys)
    assert str(cfg) in line and needle in line


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert cli_main(["sft", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml' does not exist" in error_line(capsys)


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize("stage, key", [("sft", "sft.model"), ("rm", "rm.model"), ("label", "label.policy")])
def test_model_path_that_does_not_exist_exits_2_naming_it(tmp_path, inputs, capsys, stage, key):
    missing = tmp_path / "no" / "such" / "model"
    args = with_key(inputs[stage], key, str(missing))
    assert cli_main([stage, f"run.output_dir={tmp_path / 'out'}", "run.progress=false", *args]) == 2
    line = error_line(capsys)
    assert str(missing) in line and "not a local folder" in line


@pytest.mark.parametrize("stage, key", [("sft", "sft.data"), ("rm", "rm.data"), ("ppo", "ppo.prompts"),
                                        ("label", "label.prompts")])
def test_data_file_that_does_not_exist_exits_2_naming_it(tmp_path, inputs, capsys, stage, key):
    missing = tmp_path / "nope.jsonl"
    args = with_key(inputs[stage], key, str(missing))
    assert cli_main([stage, f"run.output_dir={tmp_path / 'out'}", "run.progress=false", *args]) == 2
    assert f"{missing}: file does not exist" in error_line(capsys)


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_resume_from_a_folder_that_is_not_a_complete_checkpoint_exits_2(tmp_path, inputs, capsys, stage):
    torn = tmp_path / "out" / "checkpoints" / "step-00000003"
    torn.mkdir(parents=True)  # a checkpoint folder without its COMPLETE marker
    assert cli_main([stage, f"run.output_dir={tmp_path / 'out'}", "run.progress=false", f"run.resume={torn}",
                     *inputs[stage]]) == 2
    assert f"run.resume: '{torn}' is not a complete checkpoint folder" in error_line(capsys)


# ---------------------------------------------------------------- prompts longer than the token budget


def test_ppo_long_prompts_are_cut_on_the_left_and_counted(tmp_path, tiny_model_dir):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "long-1", "prompt": LONG + "What is 2 plus 2?"}, {"id": "short-1", "prompt": "Why is the sky blue?"},
        {"id": "long-2", "prompt": LONG + "Name a colour."}, {"id": "short-2", "prompt": "Define rain."},
    ])
    out = tmp_path / "run"
    assert cli_main(["ppo", f"run.output_dir={out}", "run.progress=false", "run.threads=1",
                     f"ppo.policy={tiny_model_dir}", f"ppo.prompts={prompts}",
                     f"ppo.reward.function={REWARDS}:length_reward", "ppo.iterations=1", "ppo.batch_size=4",
                     "ppo.micro_batch_size=2", "ppo.gradient_accumulation_steps=2",
                     "ppo.generation.max_new_tokens=4", "ppo.generation.max_prompt_tokens=64",
                     "ppo.checkpoint_every=0"]) == 0
    (row,) = read_metrics(out)
    assert row["prompts_truncated"] == 2  # the two long prompts (all four prompts are in the one batch)


def test_sft_long_prompts_are_cut_on_the_left_and_counted_in_the_log_and_metrics(tmp_path, tiny_model_dir,
                                                                                  caplog):
    data = write_jsonl(tmp_path / "sft.jsonl", [
        {"id": "long-prompt", "prompt": LONG + "What is 2 plus 2?", "completion": "4."},
        {"id": "long-answer", "prompt": "Say it.", "completion": LONG},
        {"id": "short-1", "prompt": "Why is the sky blue?", "completion": "Scattering."},
        {"id": "short-2", "prompt": "Name a colour.", "completion": "Red."},
    ])
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="rlaif.sft")
    assert cli_main(["sft", f"run.output_dir={out}", "run.progress=false", "run.threads=1",
                     f"sft.model={tiny_model_dir}", f"sft.data={data}", "sft.max_length=96", "sft.max_steps=1",
                     "sft.micro_batch_size=4", "sft.gradient_accumulation_steps=1", "sft.checkpoint_every=0"]) == 0
    (row,) = read_metrics(out)
    # the long prompt loses its start; the answer that alone does not fit keeps one prompt token and is cut
    assert row["rows"] == 4 and row["prompts_truncated"] == 2 and row["completions_truncated"] == 1
    assert "2 prompts cut on the left, 1 answers cut on the right (max_length 96)" in caplog.text
