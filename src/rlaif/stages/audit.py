"""Judge audit on a gold set before spending compute on labels (`rlaif judge-audit`).

1) read the gold pairs (`{id, prompt, better, worse, reference?, kind?}`; builtin:gold = 24 clear-cut pairs:
correct vs wrong fact, on- vs off-topic, helpful vs refusal, complete vs truncated); 2) judge every pair in both
orders (`judge_pairs_both_orders`, better answer as `a`; a panel's members each on their own too); 3) accuracy = share of pairs with
label_prob = ½(p_ab + 1 − p_ba) > 0.5 on the better side, position consistency, first-position rate (share of
decided orderings won by the answer shown first; 0.5 = no position bias) and tie rate, overall and per kind;
4) biases beyond position (`audit_bias.py`): verbosity (length gap, padding gain) and self-preference; 5) the
verdict: unreliable when accuracy < min_accuracy, consistency < min_consistency or a bias passes its threshold;
6) `audit.json` (figures, verdict, every pair) and a table on stdout. The exit status is 0 either way: the verdict is output.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..checkpoint import save_json
from ..config import ConfigError, field
from ..data.jsonl import DataError, iter_jsonl, require_str
from ..judges import JudgeConfig, judge_pairs_both_orders, make_judge
from ..judges.base import PairVerdict, PairwiseJudge, verdict_stats
from ..runtime import RunConfig, autocast_for, setup_run
from .audit_bias import bias_figures, bias_reasons, judge_bias_inputs, load_self_probes

log = logging.getLogger("rlaif.audit")


@dataclass
class AuditConfig:
    judge: JudgeConfig = field(default_factory=JudgeConfig, help="the judge to audit")
    gold: str = field("builtin:gold", help="gold JSONL of {id, prompt, better, worse, reference?, kind?} rows, or "
                      "builtin:gold (24 clear-cut pairs)")
    use_references: bool = field(True, help="show the gold rows' reference answers to the judge")
    min_accuracy: float = field(0.75, help="below this accuracy the judge is flagged unreliable")
    min_consistency: float = field(0.7, help="below this position-consistency rate the judge is flagged unreliable")
    verbosity_probes: str = field("builtin:verbosity", help="pairs whose better answer is the shorter one (gold "
                                  "format), or builtin:verbosity (12 short-right vs long-wrong pairs); '' = only "
                                  "the gold set's own")
    padding: bool = field(True, help="also judge every gold pair with filler sentences appended to the worse answer")
    self_probes: str = field("builtin:self-smollm2", help="{id, prompt, own, other} pairs of equally correct "
                             "answers, `own` written by the judge's model family, or builtin:self-smollm2 (SmolLM2-"
                             "135M-Instruct's own answers); '' = no self-preference figure")
    max_length_gap: float = field(0.25, help="verbosity: above this accuracy gap (better answer longer minus "
                                  "shorter) the judge is flagged")
    max_padding_gain: float = field(0.1, help="verbosity: above this mean rise of P(worse better) from padding the "
                                    "judge is flagged")
    max_self_preference: float = field(0.15, help="above this P(own answer better) - 0.5 the judge is flagged")

    def validate(self) -> None:
        for key in ("min_accuracy", "min_consistency", "max_length_gap", "max_padding_gain", "max_self_preference"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"config key 'judge_audit.{key}': must be in [0, 1]")


@dataclass(frozen=True)
class GoldPair:
    id: str
    prompt: str
    better: str
    worse: str
    reference: str | None
    kind: str


def load_gold(arg: str) -> list[GoldPair]:
    """Step 1: gold pairs; errors name file, line and field."""
    builtin = {"builtin:gold": "gold.jsonl", "builtin:verbosity": "verbosity.jsonl"}
    path = Path(str(resources.files("rlaif") / "assets" / "judge" / builtin[arg])) if arg in builtin else Path(arg)
    out = []
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        ref = obj.get("reference")
        if ref is not None and not isinstance(ref, str):
            raise DataError(f"{where}: field 'reference' must be a string")
        out.append(GoldPair(str(obj.get("id", f"line-{lineno}")), require_str(obj, "prompt", where),
                            require_str(obj, "better", where), require_str(obj, "worse", where), ref or None,
                            str(obj.get("kind", "all"))))
    if not out:
        raise DataError(f"{path}: no gold pairs (the file is empty)")
    return out


def audit_figures(verdicts: list[PairVerdict]) -> dict:
    """Step 3: accuracy (label_prob > 0.5 for the better answer, shown as `a`) plus the verdict statistics."""
    stats = verdict_stats(verdicts, correct_is_a=True)
    return {"accuracy": sum(v.label_prob > 0.5 for v in verdicts) / len(verdicts), **stats}


def run_audit(run: RunConfig, cfg: AuditConfig, resolved_config: dict | None = None,
              judge: PairwiseJudge | None = None) -> dict:
    """Audit the judge; returns (and writes to `<output_dir>/audit.json`) the report."""
    t0 = time.time()
    out, device = setup_run(run)
    # 1. gold pairs
    gold = load_gold(cfg.gold)
    judge = judge or make_judge(cfg.judge, device=device, autocast=autocast_for(device, run.precision),
                                 key="judge_audit.judge")
    # 2. both orders, the better answer as `a`
    refs = [g.reference if cfg.use_references else None for g in gold]
    verdicts = judge_pairs_both_orders(judge, [g.prompt for g in gold], [g.better for g in gold],
                                       [g.worse for g in gold], refs)
    # 3. figures, overall and per kind
    overall = audit_figures(verdicts)
    by_kind = {}
    for kind in dict.fromkeys(g.kind for g in gold):
        by_kind[kind] = audit_figures([v for g, v in zip(gold, verdicts) if g.kind == kind])
    # 4. biases beyond position (verbosity, self-preference), for the judge and each panel member
    th = {k: getattr(cfg, k) for k in ("max_length_gap", "max_padding_gain", "max_self_preference")}
    inputs = judge_bias_inputs(judge, gold, verdicts, load_gold(cfg.verbosity_probes) if cfg.verbosity_probes else [],
                               load_self_probes(cfg.self_probes) if cfg.self_probes else [], cfg.use_references,
                               cfg.padding)
    biases = bias_figures(inputs, th)
    if overall.get("members"):
        biases["members"] = {name: bias_figures(inputs, th, name) for name in overall["members"]}
    # 5. verdict
    reasons = []
    if overall["accuracy"] < cfg.min_accuracy:
        reasons.append(f"accuracy {overall['accuracy']:.3f} < min_accuracy {cfg.min_accuracy}")
    if overall["consistency_rate"] < cfg.min_consistency:
        reasons.append(f"position consistency {overall['consistency_rate']:.3f} < min_consistency "
                       f"{cfg.min_consistency}")
    reasons += bias_reasons(biases)
    report = {
        "judge": judge.metadata(), "gold": cfg.gold, "reliable": not reasons, "reasons": reasons,
        "thresholds": {"min_accuracy": cfg.min_accuracy, "min_consistency": cfg.min_consistency, **th},
        **overall, "by_kind": by_kind, "biases": biases, "wall_time_s": round(time.time() - t0, 3),
        "pairs_detail": [{"id": g.id, "kind": g.kind, "correct": v.label_prob > 0.5, **v.as_dict()}
                         for g, v in zip(gold, verdicts)],
    }
    # 6. audit.json and the table
    save_json(out / "audit.json", report)
    print(format_table(report))
    return report


def format_table(report: dict) -> str:
    def f(x) -> str:
        return "  n/a" if x is None else f"{x:5.2f}"

    w = max([12, *(len(n) + 3 for n in report.get("members") or {})])
    lines = [f"judge audit: {report['judge']['judge']}  ({report['pairs']} gold pairs, both orders)",
             f"{'kind':{w}s} {'pairs':>5s} {'acc':>5s} {'consis':>6s} {'first':>5s} {'ties':>5s}"]
    for kind, s in [*report["by_kind"].items(), ("ALL", report)]:
        lines.append(f"{kind:{w}s} {s['pairs']:5d} {f(s['accuracy'])} {f(s['consistency_rate']):>6s} "
                     f"{f(s['first_position_rate'])} {f(s['tie_rate'])}")
    verdict = "RELIABLE" if report["reliable"] else "UNRELIABLE: " + "; ".join(report["reasons"])
    for name, m in (report.get("members") or {}).items():
        lines.append(f"{'  ' + name:{w}s} {report['pairs']:5d} {f(m['accuracy'])} {f(m['consistency_rate']):>6s} "
                     f"{f(m['first_position_rate'])}       (panel member)")
    if report.get("members"):
        lines.append(f"panel: every member picks the same winner on {report['panel_agreement']:.2f} of the pairs, "
                     f"mean disagreement {report['mean_disagreement']:.2f}")
    biases = report.get("biases") or {}
    for who, figs in [("", biases), *[(f"{n}: ", f) for n, f in (biases.get("members") or {}).items()]]:
        for key, fig in figs.items():
            if key != "members" and isinstance(fig, dict):
                lines.append(f"bias {who}{key.replace('_', ' ')} {fig['value']:+.3f} (threshold {fig['threshold']}): "
                             f"{'BIASED' if fig['biased'] else 'ok'}")
    lines.append(f"verdict: {verdict}")
    lines.append("(acc: both-order label on the better answer; consis: same winner in both orders; first: share "
                 "of orderings won by the first position, 0.5 = unbiased)")
    return "\n".join(lines)


__all__ = ["AuditConfig", "run_audit", "load_gold", "audit_figures", "format_table", "GoldPair"]
