"""Judge panels (`judge.panel`): the combined label against hand-computed numbers, per-member figures, weights
from config and from an audit, config errors that name the member's key, and a panel through label and
judge-audit (function judges, the tiny random Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.config import ConfigError, load_config
from rlaif.configs import RootConfig
from rlaif.judges import judge_pairs_both_orders, make_judge, verdict_stats
from rlaif.stages import label
from rlaif.stages.audit import run_audit

JUDGES = Path(__file__).resolve().with_name("rewards_for_tests.py")
LONGER, FIRST = f"{JUDGES}:longer_wins", f"{JUDGES}:always_first"


def panel_args(section: str, *extra: str) -> list[str]:
    """A two-member panel: `longer` (0.9 / 0.1 for the longer answer) and `first` (0.8 for the first shown)."""
    members = f"[{{name: longer, backend: function, function: '{LONGER}', weight: 3}}, " \
              f"{{name: first, backend: function, function: '{FIRST}', weight: 1}}]"
    return [f"{section}.judge.panel={members}", *extra]


def panel_judge(*extra: str):
    cfg = load_config(RootConfig, None, panel_args("label", *extra))
    return make_judge(cfg.label.judge)


def test_panel_label_is_the_weighted_mean_of_the_members_debiased_labels():
    # a = the longer answer. longer: p_ab 0.9, p_ba 0.1 -> 0.9, consistent; first: 0.8, 0.8 -> 0.5, inconsistent
    mean = panel_judge()
    (v,) = judge_pairs_both_orders(mean, ["q"], ["a long answer"], ["short"])
    assert mean.id == "panel(longer,first)"
    assert v.p_ab == pytest.approx(0.85) and v.p_ba == pytest.approx(0.45)
    assert v.label_prob == pytest.approx(0.7)  # ½(0.85 + 1 − 0.45) = mean(0.9, 0.5)
    assert v.members["longer"]["label_prob"] == pytest.approx(0.9) and v.members["longer"]["consistent"]
    assert v.members["first"]["label_prob"] == pytest.approx(0.5) and not v.members["first"]["consistent"]
    assert v.disagreement == pytest.approx(0.4)
    # weighted 3 : 1 -> p_ab = .75·.9 + .25·.8 = .875, p_ba = .75·.1 + .25·.8 = .275, label = .75·.9 + .25·.5
    weighted = panel_judge("label.judge.panel_combine=weighted")
    (w,) = judge_pairs_both_orders(weighted, ["q"], ["a long answer"], ["short"])
    assert (w.p_ab, w.p_ba, w.label_prob) == pytest.approx((0.875, 0.275, 0.8))
    meta = weighted.metadata()
    assert meta["backend"] == "panel" and [m["weight"] for m in meta["members"]] == [0.75, 0.25]
    assert meta["members"][0]["function"] == LONGER


def test_member_figures_per_member_and_for_the_panel():
    judge = panel_judge()
    verdicts = judge_pairs_both_orders(judge, ["q"] * 3, ["a long answer", "tiny", "same"], ["short", "longer one",
                                                                                             "also"])
    stats = verdict_stats(verdicts, correct_is_a=True)
    longer, first = stats["members"]["longer"], stats["members"]["first"]
    # longer: consistent on the two pairs of unequal length, a tie (0.5 both orders) on the equal pair
    assert longer["consistency_rate"] == 1.0 and longer["first_position_rate"] == 0.5
    assert longer["accuracy"] == pytest.approx(1 / 3)  # only pair 1 has the longer answer as `a`
    # first: every decided ordering goes to the first answer; every label is 0.5 (a tie, never > 0.5)
    assert first["consistency_rate"] == 0.0 and first["first_position_rate"] == 1.0 and first["accuracy"] == 0.0
    # panel labels 0.7, 0.3, 0.5 -> `longer` picks the panel's side every time, `first` (always a tie) only on
    # the equal pair; the members agree only there
    assert longer["agreement_with_panel"] == 1.0 and first["agreement_with_panel"] == pytest.approx(1 / 3)
    assert stats["panel_agreement"] == pytest.approx(1 / 3)
    assert stats["mean_disagreement"] == pytest.approx((0.4 + 0.4 + 0.0) / 3)
    # a single judge's stats carry no panel figures
    single = make_judge(load_config(RootConfig, None, ["label.judge.backend=function",
                                                       f"label.judge.function={LONGER}"]).label.judge)
    assert "members" not in verdict_stats(judge_pairs_both_orders(single, ["q"], ["ab"], ["a"]))


@pytest.mark.parametrize("value, message", [
    ("[{backend: function, function: 'x.py:f'}]", "label.judge.panel': a panel needs at least two members"),
    (f"[{{name: a, backend: function, function: '{LONGER}'}}, {{name: b, modle: x}}]",
     "unknown config key 'label.judge.panel[1].modle'"),
    (f"[{{name: a, backend: function, function: '{LONGER}'}}, {{name: b, batch_size: 0}}]",
     "label.judge.panel[1].batch_size': must be >= 1"),
    (f"[{{name: a, backend: function, function: '{LONGER}'}}, {{name: a, backend: embedding}}]",
     "member names must be unique"),
    (f"[{{name: a, backend: function, function: '{LONGER}', weight: -1}}, {{name: b}}]",
     "label.judge.panel[0].weight': expected a number >= 0"),
    ("[{name: a, panel: []}, {name: b}]", "label.judge.panel[0].panel': a panel member cannot be a panel"),
    ("[1, 2]", "label.judge.panel[0]': expected a mapping"),
])
def test_bad_panel_config_names_the_key(value, message):
    with pytest.raises(ConfigError) as err:
        load_config(RootConfig, None, [f"label.judge.panel={value}"])
    assert message in str(err.value)


def test_audit_weights_and_errors(tmp_path):
    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"members": {"longer": {"accuracy": 0.9}, "first": {"accuracy": 0.5}}}))
    judge = panel_judge("label.judge.panel_combine=audit", f"label.judge.panel_audit={audit}")
    assert judge.weights == pytest.approx([1.0, 0.0])  # (0.9 − 0.5) : max(0.5 − 0.5, 0)
    with pytest.raises(ConfigError, match="panel_audit': panel_combine=audit needs"):
        panel_judge("label.judge.panel_combine=audit")
    audit.write_text(json.dumps({"members": {"longer": {"accuracy": 0.4}, "first": {"accuracy": 0.5}}}))
    with pytest.raises(ConfigError, match="no member is above chance"):
        panel_judge("label.judge.panel_combine=audit", f"label.judge.panel_audit={audit}")
    audit.write_text(json.dumps({"members": {"longer": {"accuracy": 0.9}}}))
    with pytest.raises(ConfigError, match="no figures for panel member"):
        panel_judge("label.judge.panel_combine=audit", f"label.judge.panel_audit={audit}")


def test_panel_through_audit_and_label(tmp_path, tiny_model_dir, prompts_file, capsys):
    # judge-audit audits the panel and each member; the gold set's better answers are not always the longer
    cfg = load_config(RootConfig, None, [f"run.output_dir={tmp_path / 'audit'}", *panel_args("judge_audit")])
    report = run_audit(cfg.run, cfg.judge_audit)
    assert set(report["members"]) == {"longer", "first"}
    assert report["members"]["first"]["accuracy"] == 0.0 and report["members"]["first"]["consistency_rate"] == 0.0
    assert 0.0 < report["members"]["longer"]["accuracy"] <= 1.0
    assert "(panel member)" in capsys.readouterr().out
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["members"] == report["members"]
    # label with the panel weighted by that audit: only `longer` votes (first is at chance)
    out = tmp_path / "label"
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={out}", "run.progress=false", "run.threads=1", f"label.policy={tiny_model_dir}",
        f"label.prompts={prompts_file}", "label.responses_per_prompt=2", "label.max_new_tokens=8",
        *panel_args("label", "label.judge.panel_combine=audit",
                    f"label.judge.panel_audit={tmp_path / 'audit' / 'audit.json'}")])
    label.train(cfg.run, cfg.label)
    rows = [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines()]
    assert rows
    for r in rows:
        j = r["judge"]
        assert set(j["members"]) == {"longer", "first"}
        assert j["members"]["first"]["prob_a_better"] == 0.5 and not j["members"]["first"]["consistent"]
        assert j["prob_a_better"] == pytest.approx(j["members"]["longer"]["prob_a_better"])  # weight 1 : 0
        assert j["disagreement"] == pytest.approx(abs(j["members"]["longer"]["prob_a_better"] - 0.5), abs=1e-6)
    summary = json.loads((out / "label_summary.json").read_text())
    assert summary["members"]["first"]["consistency_rate"] == 0.0
    assert summary["members"]["longer"]["agreement_with_panel"] == 1.0
    assert summary["judge"]["combine"] == "audit"


def test_a_panel_as_the_ppo_reward():
    from rlaif.data.prompts import PromptRow
    from rlaif.rewards.judge_reward import JudgeReward

    panel = panel_judge()
    reward = JudgeReward(panel, "pairwise", baseline_fn=lambda rows: ["short"] * len(rows))
    rows = [PromptRow("p0", (("user", "q"),)), PromptRow("p1", (("user", "q"),))]
    # against the reference's "short": the longer answer gets the panel's 0.7 -> 2·0.7 − 1 = 0.4; an answer of
    # the same length gets longer's 0.5 and first's 0.5 -> 0
    out = reward(["q", "q"], ["a long answer", "tiny!"], rows)
    assert out.tolist() == pytest.approx([0.4, 0.0])
    with pytest.raises(ValueError, match="cannot score answers alone"):
        JudgeReward(panel, "pointwise")
