"""`rlaif pipeline` end to end on tiny random models: every stage feeds the next, a rerun skips finished stages,
a real SIGKILL between stages loses nothing, --from / --only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlaif.cli import main as cli_main
from rlaif.pipeline import DONE


def tiny_pipeline(tmp_path: Path, policy: str, prompts: str, stages=("sft", "audit", "label", "rm", "align", "eval"),
                  report: bool = True) -> Path:
    prompts_sft = str(tmp_path / "sft-heldout.jsonl")  # a held-out loss, so sft logs a step-0 row
    Path(prompts_sft).write_text('{"prompt": "Name a colour.", "completion": "Blue."}\n', encoding="utf-8")
    cfg = {
        "run": {"output_dir": str(tmp_path / "run"), "seed": 0, "threads": 1, "progress": False},
        "pipeline": {"stages": list(stages), "report": report},
        "sft": {"model": policy, "data": "builtin:demo-train", "eval_data": prompts_sft, "max_steps": 2, "micro_batch_size": 2,
                "gradient_accumulation_steps": 1, "max_length": 64, "learning_rate": 1e-3, "checkpoint_every": 1},
        "judge_audit": {"gold": "builtin:gold"},
        "label": {"prompts": prompts, "max_prompts": 6, "responses_per_prompt": 2, "max_new_tokens": 8,
                  "temperature": 1.0, "judge": {"backend": "embedding"}},
        "rm": {"model": "minilm-l6", "max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
               "eval_fraction": 0.34, "max_length": 64, "learning_rate": 1e-4, "checkpoint_every": 1},
        "ppo": {"prompts": prompts, "iterations": 2, "batch_size": 4, "micro_batch_size": 2,
                "gradient_accumulation_steps": 2, "forward_batch_size": 4, "learning_rate": 1e-3,
                "value_learning_rate": 1e-3, "checkpoint_every": 1, "missing_eos": "keep",
                "generation": {"max_new_tokens": 8, "batch_size": 4}},
        "dpo": {"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 64,
                "learning_rate": 1e-3, "checkpoint_every": 1},
        "grpo": {"prompts": prompts, "iterations": 2, "prompts_per_iteration": 2, "group_size": 2,
                 "micro_batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 1e-3,
                 "missing_eos": "keep", "generation": {"max_new_tokens": 8, "batch_size": 4}},
        "eval": {"prompts": prompts, "max_prompts": 6, "max_new_tokens": 8, "batch_size": 8,
                 "bootstrap_samples": 200, "judge": {"backend": "embedding"}},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_pipeline_end_to_end_and_rerun_skips(tmp_path, tiny_model_dir, prompts_file, capsys):
    config = tiny_pipeline(tmp_path, tiny_model_dir, prompts_file)
    assert cli_main(["pipeline", str(config)]) == 0
    root = tmp_path / "run"
    for stage in ("sft", "audit", "label", "rm", "ppo", "eval"):  # folders; align ran ppo
        assert (root / stage / DONE).is_file(), stage
    # each stage read the previous one's output
    assert yaml.safe_load((root / "label" / "config.yaml").read_text())["label"]["policy"] == str(root / "sft" / "model")
    ppo_cfg = yaml.safe_load((root / "ppo" / "config.yaml").read_text())["ppo"]
    assert ppo_cfg["policy"] == str(root / "sft" / "model") and ppo_cfg["reward"]["model"] == [str(root / "rm" / "model")]
    ev = json.loads((root / "eval" / "eval.json").read_text())
    assert ev["policy"] == str(root / "ppo" / "policy") and ev["baseline"] == str(root / "sft" / "model")
    assert 0.0 <= ev["win_rate_ci"][0] <= ev["win_rate"] <= ev["win_rate_ci"][1] <= 1.0
    assert ev["wins"] + ev["losses"] + ev["ties"] == ev["pairs"] == 6
    assert ev["policy_stats"]["reward_mean"] is not None and ev["policy_stats"]["kl_mean"] is not None
    assert {m["name"] for m in ev["monitors"]} >= {"reward_length_correlation", "rm_judge_disagreement",
                                                   "kl_to_reference"}
    samples = [json.loads(x) for x in (root / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and all(s["policy"] is not None and s["baseline"] is not None for s in samples)
    assert (root / "report.html").is_file() and (root / "summary.json").is_file()
    out = capsys.readouterr().out
    assert "ppo vs model: win-rate" in out and "report:" in out and "held-out loss" in out

    # a rerun does nothing but the report
    stamp = {s: (root / s / DONE).stat().st_mtime_ns for s in ("sft", "ppo", "eval")}
    weights = (root / "ppo" / "policy" / "model.safetensors").stat().st_mtime_ns
    assert cli_main(["pipeline", str(config)]) == 0
    assert {s: (root / s / DONE).stat().st_mtime_ns for s in stamp} == stamp
    assert (root / "ppo" / "policy" / "model.safetensors").stat().st_mtime_ns == weights

    # --only eval redoes eval alone; --from ppo redoes ppo and eval
    assert cli_main(["pipeline", str(config), "--only", "eval"]) == 0
    assert (root / "eval" / DONE).stat().st_mtime_ns > stamp["eval"]
    assert (root / "ppo" / DONE).stat().st_mtime_ns == stamp["ppo"]
    assert cli_main(["pipeline", str(config), "--from", "align"]) == 0
    assert (root / "ppo" / DONE).stat().st_mtime_ns > stamp["ppo"]
    assert (root / "sft" / DONE).stat().st_mtime_ns == stamp["sft"]

    # the other algorithms on the same labels / reward model: new align and eval folders, nothing else redone
    for algo in ("dpo", "grpo"):
        assert cli_main(["pipeline", str(config), f"pipeline.algorithm={algo}"]) == 0
        assert (root / algo / DONE).is_file() and (root / f"eval-{algo}" / DONE).is_file()
        ev = json.loads((root / f"eval-{algo}" / "eval.json").read_text())
        assert ev["policy"] == str(root / algo / "policy")
    assert (root / "sft" / DONE).stat().st_mtime_ns == stamp["sft"]
    out = capsys.readouterr().out
    assert "dpo vs model: win-rate" in out and "grpo vs model: win-rate" in out and "ppo vs model" in out


def test_only_with_missing_inputs_and_bad_stage_exit_2(tmp_path, tiny_model_dir, prompts_file, capsys):
    config = tiny_pipeline(tmp_path, tiny_model_dir, prompts_file)
    assert cli_main(["pipeline", str(config), "--only", "align"]) == 2
    assert "inputs do not exist" in capsys.readouterr().err
    assert cli_main(["pipeline", str(config), "--from", "dpo"]) == 2
    assert cli_main(["pipeline", str(config), "pipeline.stages=[align,sft]"]) == 2
    assert "must follow the order" in capsys.readouterr().err
    assert cli_main(["pipeline"]) == 2
    # overrides may follow --from/--only (argparse alone would reject them)
    assert cli_main(["pipeline", str(config), "--only", "eval", "eval.max_prompts=x"]) == 2
    assert "eval.max_prompts" in capsys.readouterr().err


def sigkill_when(cmd: list[str], env: dict, marker: Path, timeout: float) -> None:
    """Start the command, SIGKILL it as soon as `marker` exists (it must still be running then)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not marker.exists():
            time.sleep(0.05)
        assert proc.poll() is None, "the pipeline finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_between_stages_then_rerun_skips_finished(tmp_path, tiny_model_dir, prompts_file):
    config = tiny_pipeline(tmp_path, tiny_model_dir, prompts_file, stages=("sft", "label", "rm"), report=False)
    root = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlaif.cli", "pipeline", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sigkill_when(cmd, env, root / "sft" / DONE, 240)
    assert not (root / "rm" / DONE).exists()
    sft_done = (root / "sft" / DONE).read_text()
    sft_weights = (root / "sft" / "model" / "model.safetensors").stat().st_mtime_ns
    rc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=600)
    log = rc.stdout.decode()
    assert rc.returncode == 0, log[-3000:]
    assert "sft already done" in log and "stage sft ->" not in log
    assert (root / "sft" / DONE).read_text() == sft_done
    assert (root / "sft" / "model" / "model.safetensors").stat().st_mtime_ns == sft_weights
    assert (root / "rm" / DONE).exists() and (root / "rm" / "model").is_dir()
    rows = [json.loads(x) for x in (root / "label" / "preferences.jsonl").read_text().splitlines()]
    assert len({r["id"] for r in rows}) == len(rows) > 0


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")) + ["demo"],
                         ids=lambda p: p if isinstance(p, str) else p.name)
def test_shipped_configs_load(path):
    """Every config in configs/ and the embedded demo config names only real keys with valid values."""
    from rlaif.config import load_config
    from rlaif.configs import RootConfig
    from rlaif.pipeline import demo_config_path

    cfg = load_config(RootConfig, demo_config_path() if path == "demo" else path)
    if path == "demo":
        assert cfg.pipeline.stages == ["sft", "audit", "label", "rm", "align", "eval"]
        assert cfg.eval.prompts == "builtin:demo-heldout" and "heldout" not in cfg.label.prompts + cfg.ppo.prompts


def test_two_rounds_resume_after_a_kill_inside_round_2(tmp_path, tiny_model_dir, prompts_file):
    config = tiny_pipeline(tmp_path, tiny_model_dir, prompts_file, stages=("sft", "label", "rm", "align", "eval"))
    cfg = yaml.safe_load(config.read_text())
    cfg["pipeline"]["rounds"] = 2
    config.write_text(yaml.safe_dump(cfg))
    root, r2 = tmp_path / "run", tmp_path / "run" / "round-2"
    cmd = [sys.executable, "-m", "rlaif.cli", "pipeline", str(config)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sigkill_when(cmd, env, r2 / "label" / DONE, 600)
    assert not (r2 / "ppo" / DONE).exists()
    labels_r2 = (r2 / "label" / "preferences.jsonl").read_text()
    rc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=900)
    log = rc.stdout.decode()
    assert rc.returncode == 0, log[-3000:]
    assert "round 2: label" not in log and "round 2: align" in log  # resumed where it stopped
    assert (r2 / "label" / "preferences.jsonl").read_text() == labels_r2
    for folder in ("rm_shift", "rm", "ppo", "eval", "eval-prev"):
        assert (r2 / folder / DONE).is_file(), folder
    # round 2 starts from round 1's policy, labels its answers, trains the RM on both rounds' labels
    assert yaml.safe_load((r2 / "label" / "config.yaml").read_text())["label"]["policy"] == str(root / "ppo" / "policy")
    ids = [json.loads(x)["id"] for x in (r2 / "label" / "all_preferences.jsonl").read_text().splitlines()]
    assert {i.split("/")[0] for i in ids} == {"r1", "r2"} and len(set(ids)) == len(ids)
    ppo_cfg = yaml.safe_load((r2 / "ppo" / "config.yaml").read_text())["ppo"]
    assert ppo_cfg["policy"] == str(root / "ppo" / "policy") and ppo_cfg["reference"] == str(root / "sft" / "model")
    assert ppo_cfg["reward"]["model"] == [str(r2 / "rm" / "model")]
    prev = json.loads((r2 / "eval-prev" / "eval.json").read_text())
    assert prev["baseline"] == str(root / "ppo" / "policy") and prev["policy"] == str(r2 / "ppo" / "policy")
    shift = json.loads((r2 / "rm_shift.json").read_text())
    assert 0.0 <= shift["accuracy_new_labels"] <= 1.0 and shift["pairs_new"] > 0
    rounds = json.loads((root / "rounds.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["win_rate_vs_previous"] == prev["win_rate"]
    assert rounds[1]["previous_rm_accuracy_new_labels"] == shift["accuracy_new_labels"]
    page = (root / "report.html").read_text()
    assert "Rounds (iterative RLAIF)" in page and "round 2: win-rate vs SFT" in log
