"""A real `rlaif sft | rm | ppo` process killed with SIGKILL after its first complete checkpoint, then the same
command run again: the result equals one uninterrupted run (every step logged once with the same figures, the
same final weights), the checkpoint folder holds no torn leftovers and only the last K checkpoints.

The kill lands wherever the process happens to be (mid-step, mid-metrics line, mid-checkpoint write), so each
run of these tests also exercises the atomic checkpoint writes. Tiny random models, CPU, one thread.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rm_data import QA, toy_pairs, write_jsonl
from safetensors.torch import load_file

from rlaif.checkpoint import list_checkpoints
from rlaif.cli import main as cli_main
from rlaif.metrics import read_metrics

# figures that measure time, not training: they differ from run to run
TIMING_KEYS = {"s_step", "s_iteration", "s_generate", "s_score", "s_update", "tokens_per_s", "pairs_per_s"}

SLOW_REWARD = '''
import time


def slow_length(prompts, responses):
    """Characters / 10, after a pause: keeps a PPO iteration long enough to be killed in the middle."""
    time.sleep(0.15)
    return [len(r) / 10.0 for r in responses]
'''


def kill_after_first_checkpoint(cmd: list[str], out: Path, step_key: str, timeout: float = 120.0) -> list[dict]:
    """Start `cmd`; SIGKILL it once a complete checkpoint exists and a later step's metrics row is written
    (the moment a resume must not log twice); return the metrics rows it left behind."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)

    def past_a_checkpoint() -> bool:
        saved = list_checkpoints(out)
        rows = read_rows_left_by_a_kill(out / "metrics.jsonl")
        return bool(saved) and any(r[step_key] > saved[-1][0] for r in rows)

    try:
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None and not past_a_checkpoint():
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return read_rows_left_by_a_kill(out / "metrics.jsonl")


def read_rows_left_by_a_kill(path: Path) -> list[dict]:
    """metrics.jsonl as a killed run left it: a last line cut by the kill is not a row."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def rerun(cmd: list[str]) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]


def assert_same_rows(resumed: list[dict], straight: list[dict], step_key: str, steps: list[int]) -> None:
    """Every step exactly once, each figure equal to the uninterrupted run's (CPU, one thread: tight)."""
    assert [r[step_key] for r in resumed] == steps
    assert [r[step_key] for r in straight[:len(steps)]] == steps
    for a, b in zip(resumed, straight):
        assert a.keys() == b.keys(), a[step_key]
        for k in a.keys() - TIMING_KEYS:
            if a[k] is None or b[k] is None or isinstance(a[k], (str, bool, list, dict)):
                assert a[k] == b[k], (a[step_key], k)
            else:
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (a[step_key], k, a[k], b[k])


def assert_same_weights(a_file: Path, b_file: Path) -> None:
    a, b = load_file(str(a_file)), load_file(str(b_file))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def assert_tidy_checkpoints(out: Path, last: int, keep: int = 2) -> None:
    """After the resumed run: the last `keep` checkpoints, all complete, no temp folders from the kill."""
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [f"step-{s:08d}" for s in range(last - keep + 1, last + 1)]
    assert [s for s, _ in list_checkpoints(out)] == list(range(last - keep + 1, last + 1))


def assert_killed_mid_run(partial: list[dict], out: Path, step_key: str, total: int, final: str) -> None:
    """What the killed run left: a complete checkpoint, rows of steps after it (which the rerun must redo and
    not log twice), no final model."""
    saved = [s for s, _ in list_checkpoints(out)]
    assert saved and saved[-1] < total, saved
    assert not (out / final).exists()
    logged = [r[step_key] for r in partial if r[step_key] > 0]
    assert logged == list(range(1, len(logged) + 1)) and saved[-1] < len(logged) < total


# ---------------------------------------------------------------- sft


def test_sft_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"id": f"r{i}", "prompt": q, "completion": a}
                                                for i, (q, a) in enumerate(QA)])
    total = 16

    def args(out: Path) -> list[str]:
        return ["sft", f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1",
                f"sft.model={tiny_model_dir}", f"sft.data={data}", f"sft.max_steps={total}",
                "sft.micro_batch_size=2", "sft.gradient_accumulation_steps=1", "sft.learning_rate=0.001",
                "sft.warmup_steps=2", "sft.eval_fraction=0.25", "sft.eval_every=5", "sft.checkpoint_every=1"]

    straight_dir, out = tmp_path / "straight", tmp_path / "killed"
    assert cli_main(args(straight_dir)) == 0
    cmd = [sys.executable, "-m", "rlaif.cli", *args(out)]
    partial = kill_after_first_checkpoint(cmd, out, "step")
    assert_killed_mid_run(partial, out, "step", total, "model")
    rerun(cmd)

    resumed, straight = read_metrics(out), read_metrics(straight_dir)
    assert_same_rows(resumed, straight, "step", list(range(total + 1)))  # step 0: held-out loss before training
    assert_same_rows(partial, straight, "step", [r["step"] for r in partial])  # what it logged before the kill
    assert_same_weights(out / "model" / "model.safetensors", straight_dir / "model" / "model.safetensors")
    assert_tidy_checkpoints(out, total)


# ---------------------------------------------------------------- rm


def test_rm_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(8, soft=True, margins=True))
    total = 16

    def args(out: Path) -> list[str]:
        return ["rm", f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1",
                f"rm.model={tiny_model_dir}", f"rm.data={data}", f"rm.max_steps={total}",
                "rm.micro_batch_size=2", "rm.gradient_accumulation_steps=1", "rm.learning_rate=0.001",
                "rm.eval_fraction=0.25", "rm.eval_every=5", "rm.center_coef=0.01", "rm.checkpoint_every=1"]

    straight_dir, out = tmp_path / "straight", tmp_path / "killed"
    assert cli_main(args(straight_dir)) == 0
    cmd = [sys.executable, "-m", "rlaif.cli", *args(out)]
    partial = kill_after_first_checkpoint(cmd, out, "step")
    assert_killed_mid_run(partial, out, "step", total, "model")
    rerun(cmd)

    resumed, straight = read_metrics(out), read_metrics(straight_dir)
    assert_same_rows(resumed, straight, "step", list(range(total + 1)))
    assert_same_rows(partial, straight, "step", [r["step"] for r in partial])
    assert_same_weights(out / "model" / "model.safetensors", straight_dir / "model" / "model.safetensors")
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, straight_dir))
    assert a["rlaif_reward_bias"] == pytest.approx(b["rlaif_reward_bias"], rel=1e-5, abs=1e-7)
    assert a["eval"]["accuracy"] == b["eval"]["accuracy"]
    assert_tidy_checkpoints(out, total)


# ---------------------------------------------------------------- ppo


def test_ppo_sigkill_then_rerun_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, prompts_file):
    reward = tmp_path / "slow_reward.py"
    reward.write_text(SLOW_REWARD, encoding="utf-8")
    total = 8

    def args(out: Path) -> list[str]:
        return ["ppo", f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1",
                f"ppo.policy={tiny_model_dir}", f"ppo.prompts={prompts_file}",
                f"ppo.reward.function={reward}:slow_length", f"ppo.iterations={total}", "ppo.batch_size=4",
                "ppo.micro_batch_size=1", "ppo.gradient_accumulation_steps=2", "ppo.forward_batch_size=4",
                "ppo.generation.max_new_tokens=6", "ppo.generation.batch_size=4", "ppo.missing_eos=keep",
                "ppo.kl_target=0.5", "ppo.kl_horizon=100", "ppo.learning_rate=0.001",
                "ppo.value_learning_rate=0.001", "ppo.checkpoint_every=1",
                "ppo.critic=separate", "ppo.old_logprobs=recompute"]  # the most state: a critic and its optimizer

    straight_dir, out = tmp_path / "straight", tmp_path / "killed"
    assert cli_main(args(straight_dir)) == 0
    cmd = [sys.executable, "-m", "rlaif.cli", *args(out)]
    partial = kill_after_first_checkpoint(cmd, out, "iteration")
    assert_killed_mid_run(partial, out, "iteration", total, "policy")
    rerun(cmd)

    resumed, straight = read_metrics(out), read_metrics(straight_dir)
    assert_same_rows(resumed, straight, "iteration", list(range(1, total + 1)))
    assert_same_rows(partial, straight, "iteration", [r["iteration"] for r in partial])
    assert any(r["kl"] != 0 for r in straight)  # the policy moved, so a wrong resume would show
    assert_same_weights(out / "policy" / "model.safetensors", straight_dir / "policy" / "model.safetensors")
    ck = out / "checkpoints" / f"step-{total:08d}" / "value" / "model.safetensors"
    assert_same_weights(ck, straight_dir / "checkpoints" / f"step-{total:08d}" / "value" / "model.safetensors")
    assert_tidy_checkpoints(out, total)


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_exits_130_with_a_resume_hint_and_leaves_a_complete_checkpoint(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"id": f"r{i}", "prompt": q, "completion": a}
                                                for i, (q, a) in enumerate(QA)])
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlaif.cli", "sft", f"run.output_dir={out}", "run.progress=false", "run.threads=1",
           f"sft.model={tiny_model_dir}", f"sft.data={data}", "sft.max_steps=200", "sft.micro_batch_size=2",
           "sft.gradient_accumulation_steps=1", "sft.checkpoint_every=1"]
    # as from a terminal: SIGINT at its default even where this test process inherited it ignored (a job started
    # with `&` by a non-interactive shell, e.g. CI in the background), which Python's child would keep ignoring
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list_checkpoints(out):
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "interrupted; rerun the same command to resume from the last checkpoint" in err.decode()
    assert list_checkpoints(out) and not (out / "model").exists()
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".tmp")]  # a write cut short goes
