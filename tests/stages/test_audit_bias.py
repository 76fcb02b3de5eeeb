"""Bias audit beyond position (`rlaif judge-audit`): a judge that always prefers the longer answer measures as
verbosity-biased, an oracle does not; a judge that prefers its own family's answers measures as self-preferring;
a panel gets every figure per member; bad probe files name file, line and field."""

from __future__ import annotations

import json

import pytest

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.jsonl import DataError
from rlaif.stages.audit import load_gold, run_audit
from rlaif.stages.audit_bias import filler, load_self_probes

JUDGES = '''
import json
from importlib import resources

def _rows(name):
    return [json.loads(x) for x in (resources.files("rlaif") / "assets" / "judge" / name).read_text().splitlines()]

BETTER = {g["better"] for g in _rows("gold.jsonl") + _rows("verbosity.jsonl")}
OWN = {p["own"] for p in _rows("self-smollm2.jsonl")}


def oracle(prompts, firsts, seconds):
    return [0.95 if f in BETTER else 0.05 if s in BETTER else 0.5 for f, s in zip(firsts, seconds)]


def longer(prompts, firsts, seconds):
    return [0.9 if len(f) > len(s) else 0.1 if len(f) < len(s) else 0.5 for f, s in zip(firsts, seconds)]


def narcissist(prompts, firsts, seconds):
    """The oracle, except that it prefers its own family's answers whenever it sees one."""
    return [0.9 if f in OWN else 0.1 if s in OWN else p for f, s, p in zip(firsts, seconds, oracle(prompts, firsts, seconds))]
'''


@pytest.fixture()
def judges_py(tmp_path) -> str:
    path = tmp_path / "bias_judges.py"
    path.write_text(JUDGES, encoding="utf-8")
    return str(path)


def audit(tmp_path, *overrides: str) -> dict:
    cfg = load_config(RootConfig, None, [f"run.output_dir={tmp_path / 'a'}", *overrides])
    return run_audit(cfg.run, cfg.judge_audit)


def function_judge(judges_py: str, name: str) -> list[str]:
    return ["judge_audit.judge.backend=function", f"judge_audit.judge.function={judges_py}:{name}"]


def test_shipped_probes():
    probes = load_gold("builtin:verbosity")
    assert len(probes) == 12 and all(len(p.better) < len(p.worse) for p in probes)
    own = load_self_probes("builtin:self-smollm2")
    assert len(own) == 7 and all(p.own != p.other for p in own) and "SmolLM2" in own[0].own_model
    pad = filler("some worse answer")
    assert pad == filler("some worse answer") and len(pad) > 80  # deterministic, long, no content


def test_longer_judge_is_verbosity_biased_and_the_oracle_is_not(tmp_path, judges_py, capsys):
    report = audit(tmp_path, *function_judge(judges_py, "longer"))
    b = report["biases"]
    # gold: 20 pairs with the better answer strictly longer (0.9 -> right), 2 of equal length (0.5, not right);
    # the 2 gold pairs and 12 probes with the better answer shorter all go to the longer, wrong answer
    assert b["length_gap"]["accuracy_better_longer"] == pytest.approx(20 / 22, abs=1e-4)
    assert b["length_gap"]["accuracy_better_shorter"] == 0.0 and b["length_gap"]["pairs_better_shorter"] == 14
    assert b["length_gap"]["biased"] and b["padding_gain"]["biased"] and b["padding_gain"]["value"] > 0.5
    assert not report["reliable"] and any("verbosity: length gap" in r for r in report["reasons"])
    assert "bias length gap +0.909" in capsys.readouterr().out
    clean = audit(tmp_path, *function_judge(judges_py, "oracle"))["biases"]
    assert clean["length_gap"]["value"] == 0.0 and clean["padding_gain"]["value"] == 0.0
    assert clean["self_preference"]["value"] == 0.0  # both answers right: 0.5 in both orders
    assert not any(f["biased"] for f in clean.values())


def test_self_preference(tmp_path, judges_py):
    report = audit(tmp_path, *function_judge(judges_py, "narcissist"))
    sp = report["biases"]["self_preference"]
    assert sp["p_own_better"] == pytest.approx(0.9) and sp["value"] == pytest.approx(0.4) and sp["biased"]
    assert "self-preference 0.400 > 0.15" in report["reasons"]
    assert not report["biases"]["length_gap"]["biased"]  # otherwise an oracle
    off = audit(tmp_path, *function_judge(judges_py, "narcissist"), "judge_audit.self_probes=''",
                "judge_audit.verbosity_probes=''", "judge_audit.padding=false")
    assert "self_preference" not in off["biases"] and "padding_gain" not in off["biases"]
    assert off["biases"]["length_gap"]["pairs_better_shorter"] == 2  # the gold set's own


def test_panel_members_get_their_own_bias_figures(tmp_path, judges_py):
    members = (f"[{{name: longer, backend: function, function: '{judges_py}:longer'}}, "
               f"{{name: oracle, backend: function, function: '{judges_py}:oracle'}}]")
    report = audit(tmp_path, f"judge_audit.judge.panel={members}")
    per = report["biases"]["members"]
    assert per["longer"]["length_gap"]["biased"] and not per["oracle"]["length_gap"]["biased"]
    assert per["oracle"]["padding_gain"]["value"] == 0.0
    assert report["members"]["oracle"]["accuracy"] > report["members"]["longer"]["accuracy"]


def test_bad_self_probe_file(tmp_path, judges_py):
    bad = tmp_path / "probes.jsonl"
    bad.write_text(json.dumps({"id": "x", "prompt": "q", "own": "a"}) + "\n")
    with pytest.raises(DataError, match=f"{bad}:1: missing field 'other'"):
        audit(tmp_path, *function_judge(judges_py, "oracle"), f"judge_audit.self_probes={bad}")
