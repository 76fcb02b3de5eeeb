"""`rlaif judge-audit` with function judges on the shipped gold set: a judge that is always right passes, one
that always picks the first answer is flagged (accuracy, consistency, first-position bias); bad gold files."""

from __future__ import annotations

import json

import pytest

from rlaif.cli import main as cli_main
from rlaif.config import ConfigError, load_config
from rlaif.configs import RootConfig
from rlaif.data.jsonl import DataError
from rlaif.stages.audit import load_gold, run_audit

JUDGES = '''
import json
from importlib import resources

GOLD = [json.loads(x) for name in ("gold.jsonl", "verbosity.jsonl")
        for x in (resources.files("rlaif") / "assets" / "judge" / name).read_text().splitlines()]
BETTER = {g["better"] for g in GOLD}  # an oracle on the gold set and on the verbosity probes


def oracle(prompts, firsts, seconds):
    return [0.95 if f in BETTER else 0.05 for f in firsts]


def always_first(prompts, firsts, seconds):
    return [0.9 for _ in firsts]
'''


@pytest.fixture()
def judges_py(tmp_path) -> str:
    path = tmp_path / "judges_for_audit.py"
    path.write_text(JUDGES, encoding="utf-8")
    return str(path)


def audit(tmp_path, judge: str, *extra: str) -> dict:
    cfg = load_config(RootConfig, None, [f"run.output_dir={tmp_path}", "judge_audit.judge.backend=function",
                                         f"judge_audit.judge.function={judge}", *extra])
    return run_audit(cfg.run, cfg.judge_audit)


def test_gold_set_is_shipped_and_clear_cut():
    gold = load_gold("builtin:gold")
    assert len(gold) == 24 and len({g.id for g in gold}) == 24
    kinds = {g.kind for g in gold}
    assert kinds == {"fact", "topic", "refusal", "truncated"}
    assert all(g.better != g.worse and g.reference for g in gold)


def test_oracle_passes(tmp_path, judges_py, capsys):
    report = audit(tmp_path, f"{judges_py}:oracle")
    assert report["accuracy"] == 1.0 and report["consistency_rate"] == 1.0
    assert report["first_position_rate"] == 0.5 and report["tie_rate"] == 0.0
    assert report["reliable"] and report["reasons"] == []
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert saved["accuracy"] == 1.0 and len(saved["pairs_detail"]) == 24
    assert saved["pairs_detail"][0]["label_prob"] == pytest.approx(0.95)  # ½(0.95 + 1 − 0.05)
    assert set(saved["by_kind"]) == {"fact", "topic", "refusal", "truncated"}
    out = capsys.readouterr().out
    assert "verdict: RELIABLE" in out and "ALL" in out


def test_always_first_is_flagged(tmp_path, judges_py, capsys):
    report = audit(tmp_path, f"{judges_py}:always_first")
    # ½(0.9 + 1 − 0.9) = 0.5 for every pair: no pair goes to the better answer, none is order-consistent
    assert report["accuracy"] == 0.0 and report["consistency_rate"] == 0.0
    assert report["first_position_rate"] == 1.0 and report["tie_rate"] == 1.0
    assert not report["reliable"] and len(report["reasons"]) == 2
    assert "UNRELIABLE" in capsys.readouterr().out


def test_thresholds_and_cli_exit_zero_either_way(tmp_path, judges_py, capsys):
    report = audit(tmp_path / "lenient", f"{judges_py}:always_first", "judge_audit.min_accuracy=0",
                   "judge_audit.min_consistency=0")
    assert report["reliable"]
    rc = cli_main(["judge-audit", f"run.output_dir={tmp_path / 'cli'}", "judge_audit.judge.backend=function",
                   f"judge_audit.judge.function={judges_py}:always_first"])
    assert rc == 0 and "UNRELIABLE" in capsys.readouterr().out
    assert not json.loads((tmp_path / "cli" / "audit.json").read_text())["reliable"]
    with pytest.raises(ConfigError, match="judge_audit.min_accuracy"):
        load_config(RootConfig, None, ["judge_audit.min_accuracy=1.5"])


def test_bad_gold_file_names_line_and_field(tmp_path, judges_py):
    bad = tmp_path / "gold.jsonl"
    bad.write_text('{"prompt": "q", "better": "a", "worse": "b"}\n{"prompt": "q", "better": "a"}\n',
                   encoding="utf-8")
    with pytest.raises(DataError, match="gold.jsonl:2: missing field 'worse'"):
        load_gold(str(bad))
    rc = cli_main(["judge-audit", f"run.output_dir={tmp_path / 'o'}", f"judge_audit.gold={bad}",
                   "judge_audit.judge.backend=function", f"judge_audit.judge.function={judges_py}:oracle"])
    assert rc == 2
