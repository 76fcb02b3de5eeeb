"""`rlaif label` on the tiny random Llama with function judges: rows `rlaif rm` reads, deterministic pairs,
inconsistent pairs dropped, a torn last line, and a real SIGKILL followed by a rerun (every pair exactly once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlaif.cli import main as cli_main
from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.preferences import load_preferences
from rlaif.stages import label

JUDGES = '''
import time


def longer(prompts, firsts, seconds):
    """Prefers the longer answer, whatever the order (consistent)."""
    return [0.9 if len(f) > len(s) else 0.1 if len(f) < len(s) else 0.5 for f, s in zip(firsts, seconds)]


def always_first(prompts, firsts, seconds):
    return [0.8 for _ in firsts]


def slow_longer(prompts, firsts, seconds):
    time.sleep(0.3)
    return longer(prompts, firsts, seconds)
'''


@pytest.fixture()
def judges_py(tmp_path) -> str:
    path = tmp_path / "judges_for_label.py"
    path.write_text(JUDGES, encoding="utf-8")
    return str(path)


def label_args(out, model: str, prompts: str, judge: str, *extra: str) -> list[str]:
    return [f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1", f"label.policy={model}",
            f"label.prompts={prompts}", "label.responses_per_prompt=3", "label.max_new_tokens=8",
            "label.judge.backend=function", f"label.judge.function={judge}", *extra]


def run_label(out: Path, *args: str) -> list[dict]:
    cfg = load_config(RootConfig, None, list(args))
    label.train(cfg.run, cfg.label)
    return read_rows(out / "preferences.jsonl")


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def essence(rows: list[dict]) -> dict[str, tuple]:
    return {r["id"]: (r["prompt"], r["chosen"], r["rejected"], r["label_prob"]) for r in rows}


def test_label_rows_feed_rm_and_are_deterministic(tmp_path, tiny_model_dir, prompts_file, judges_py):
    out = tmp_path / "a"
    rows = run_label(out, *label_args(out, tiny_model_dir, prompts_file, f"{judges_py}:longer"))
    # 8 prompts x 3 pairs (0-1, 0-2, 1-2) minus pairs of identical texts (none expected from random tokens)
    assert len(rows) == 24 and len({r["id"] for r in rows}) == 24
    assert {r["id"] for r in rows} == {f"p{p}:{i}-{j}" for p in range(8) for i, j in [(0, 1), (0, 2), (1, 2)]}
    prefs = load_preferences(out / "preferences.jsonl")  # exactly what `rlaif rm` reads
    assert len(prefs) == 24
    for r in rows:
        j = r["judge"]
        assert r["label_prob"] >= 0.5 and len(r["chosen"]) >= len(r["rejected"])
        if len(r["chosen"]) > len(r["rejected"]):
            # longer judge: p_ab and p_ba are 0.9 / 0.1 -> label 0.9 for the longer answer, consistent
            assert r["label_prob"] == pytest.approx(0.9) and j["consistent"]
        assert j["judge"] == f"function:{judges_py}:longer" and j["backend"] == "function"
        assert {"p_first_better_ab", "p_first_better_ba", "tokens", "latency_s", "responses"} <= set(j)
    summary = json.loads((out / "label_summary.json").read_text())
    assert summary["pairs_judged"] == 24 and summary["pairs_judged_this_run"] == 24
    assert summary["parse_failures"] == 0 and 0.0 <= summary["position_consistency_rate"] <= 1.0
    # the same seed in another folder: the same answers, pairs and labels
    out2 = tmp_path / "b"
    assert essence(run_label(out2, *label_args(out2, tiny_model_dir, prompts_file, f"{judges_py}:longer"))) == \
        essence(rows)
    # a rerun in the same folder judges nothing and writes nothing
    again = run_label(out, *label_args(out, tiny_model_dir, prompts_file, f"{judges_py}:longer"))
    assert again == rows
    assert json.loads((out / "label_summary.json").read_text())["pairs_judged_this_run"] == 0
    # run.resume=never starts the output afresh: the same rows again, all judged anew
    fresh = run_label(out, *label_args(out, tiny_model_dir, prompts_file, f"{judges_py}:longer", "run.resume=never"))
    assert essence(fresh) == essence(rows) and len(fresh) == 24
    assert json.loads((out / "label_summary.json").read_text())["pairs_judged_this_run"] == 24


def test_inconsistent_pairs_dropped_or_soft(tmp_path, tiny_model_dir, prompts_file, judges_py):
    out = tmp_path / "drop"
    args = label_args(out, tiny_model_dir, prompts_file, f"{judges_py}:always_first", "label.max_prompts=2",
                      "label.inconsistent=drop")
    assert run_label(out, *args) == []
    dropped = read_rows(out / "dropped.jsonl")
    assert len(dropped) == 6 and not any(r["judge"]["consistent"] for r in dropped)
    summary = json.loads((out / "label_summary.json").read_text())
    # always 0.8 for the first: ½(0.8 + 1 − 0.8) = 0.5 -> every pair a tie, the first position always wins
    assert summary["pairs_written"] == 0 and summary["pairs_dropped"] == 6
    assert summary["position_consistency_rate"] == 0.0 and summary["first_position_rate"] == 1.0
    assert summary["tie_rate"] == 1.0
    assert run_label(out, *args) == [] and len(read_rows(out / "dropped.jsonl")) == 6  # not judged again
    soft = tmp_path / "soft"
    rows = run_label(soft, *label_args(soft, tiny_model_dir, prompts_file, f"{judges_py}:always_first",
                                       "label.max_prompts=2", "label.pairing=consecutive"))
    assert [r["id"] for r in rows] == ["p0:0-1", "p0:1-2", "p1:0-1", "p1:1-2"]
    assert all(r["label_prob"] == pytest.approx(0.5) for r in rows)


def test_torn_last_line_is_cut_and_redone(tmp_path, tiny_model_dir, prompts_file, judges_py):
    ref = tmp_path / "ref"
    full = run_label(ref, *label_args(ref, tiny_model_dir, prompts_file, f"{judges_py}:longer",
                                      "label.max_prompts=2"))
    out = tmp_path / "torn"
    out.mkdir()
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in full[:2])
    (out / "preferences.jsonl").write_text(text + json.dumps(full[2])[:25], encoding="utf-8")
    rows = run_label(out, *label_args(out, tiny_model_dir, prompts_file, f"{judges_py}:longer",
                                      "label.max_prompts=2"))
    assert essence(rows) == essence(full) and len(rows) == len(full)


def test_sigkill_then_rerun_labels_every_pair_once(tmp_path, tiny_model_dir, prompts_file, judges_py):
    ref = tmp_path / "ref"
    expected = essence(run_label(ref, *label_args(ref, tiny_model_dir, prompts_file, f"{judges_py}:longer")))
    out = tmp_path / "killed"
    args = label_args(out, tiny_model_dir, prompts_file, f"{judges_py}:slow_longer")
    cmd = [sys.executable, "-m", "rlaif.cli", "label", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    path = out / "preferences.jsonl"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not read_rows(path):
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    partial = read_rows(path)
    assert 1 <= len(partial) < len(expected)
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=300)
    assert rc.returncode == 0, rc.stderr.decode()[-2000:]
    rows = read_rows(path)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == len(expected)  # every pair exactly once
    assert essence(rows) == expected
    assert rows[:len(partial)] == partial  # what was written before the kill is kept as is


def test_cli_label_prints_summary(tmp_path, tiny_model_dir, prompts_file, judges_py, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["label", *label_args(out, tiny_model_dir, prompts_file, f"{judges_py}:longer",
                                        "label.max_prompts=1", "label.responses_per_prompt=2")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert '"pairs_judged": 1' in printed and "preferences in" in printed
    assert (out / "config.yaml").is_file()
    assert cli_main(["label", f"run.output_dir={out}", "label.responses_per_prompt=1"]) == 2
    assert cli_main(["label", f"run.output_dir={out}", "label.judge.backend=function"]) == 2
