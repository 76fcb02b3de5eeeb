"""The headline figures of a run (what `summary.json` holds and the top of the report shows).

Only figures the run wrote are reported; a figure that is missing is None, never a guess. Warnings collect
what a reader must not miss: the eval's own warnings and monitors past their thresholds, and a judge audit
that flagged the judge unreliable.
"""

from __future__ import annotations

from typing import Any

from ..config import SECRET_MARKERS
from .load import RunData, first_value, last_value, number

STAT_KEYS = ("reward_mean", "kl_mean", "length_mean", "distinct_2", "eos_rate")


def redact(obj: Any) -> Any:
    """Values under secret-looking keys (api_key, token, ...) replaced, at any depth."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if isinstance(k, str) and any(m in k.lower() for m in SECRET_MARKERS)
                    and isinstance(v, str) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def _window_mean(rows: list[dict], key: str, k: int, end: bool) -> float | None:
    """Mean of `key` over the first (end=False) or last k rows that logged a finite value."""
    vals = [v for v in (number(r.get(key)) for r in rows) if v is not None]
    part = vals[-k:] if end else vals[:k]
    return sum(part) / len(part) if part else None


def interval_verdict(lo: float | None, hi: float | None) -> str | None:
    """Where the 95 % interval of a win-rate lies relative to 50 %."""
    if lo is None or hi is None:
        return None
    if lo > 0.5:
        return "better than the baseline (interval above 50 %)"
    if hi < 0.5:
        return "worse than the baseline (interval below 50 %)"
    return "not distinguishable from the baseline (interval contains 50 %)"


def eval_figures(ev: dict[str, Any]) -> dict[str, Any]:
    ci = ev.get("win_rate_ci")
    lo, hi = (number(ci[0]), number(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
    pol = ev.get("policy_stats") if isinstance(ev.get("policy_stats"), dict) else {}
    base = ev.get("baseline_stats") if isinstance(ev.get("baseline_stats"), dict) else {}
    out: dict[str, Any] = {
        "policy": ev.get("policy"), "baseline": ev.get("baseline"), "prompts": ev.get("prompts"),
        "win_rate": number(ev.get("win_rate")), "win_rate_ci": [lo, hi] if lo is not None else None,
        "verdict": interval_verdict(lo, hi),
        "wins": ev.get("wins"), "losses": ev.get("losses"), "ties": ev.get("ties"),
    }
    for key in STAT_KEYS:
        out[f"{key}_policy"] = number(pol.get(key))
        out[f"{key}_baseline"] = number(base.get(key))
    rp, rb = out["reward_mean_policy"], out["reward_mean_baseline"]
    out["reward_gain"] = rp - rb if rp is not None and rb is not None else None
    return out


def warnings_of(data: RunData) -> list[str]:
    ev = data.doc("eval", "eval.json")
    out = [str(w) for w in ev.get("warnings", []) or []] if isinstance(ev.get("warnings", []), list) else []
    for m in ev.get("monitors", []) or []:
        if isinstance(m, dict) and m.get("warning") and not any(str(m.get("name", "")) in w for w in out):
            out.append(f"monitor {m.get('name')}: {m.get('value')} past its threshold {m.get('threshold')}"
                       + (f" ({m['about']})" if m.get("about") else ""))
    audit = data.doc("audit", "audit.json")
    if audit and audit.get("reliable") is False:
        reasons = "; ".join(str(r) for r in audit.get("reasons", []) or [])
        out.append(f"judge audit: the judge is UNRELIABLE on the gold set ({reasons})")
    return out


def build_summary(data: RunData) -> dict[str, Any]:
    """The figures of `summary.json`: headline + one block per stage (None where a stage did not run)."""
    st = data.stages
    ev = data.doc("eval", "eval.json")
    out: dict[str, Any] = {
        "run_dir": str(data.run_dir),
        "stages": {name: ("done" if s.ran else "not run") for name, s in st.items()},
    }
    evf = eval_figures(ev) if ev else None
    out["headline"] = {
        "win_rate": evf["win_rate"] if evf else None,
        "win_rate_ci": evf["win_rate_ci"] if evf else None,
        "verdict": evf["verdict"] if evf else None,
        "reward_mean_policy": evf["reward_mean_policy"] if evf else None,
        "reward_mean_baseline": evf["reward_mean_baseline"] if evf else None,
        "kl_mean": evf["kl_mean_policy"] if evf else None,
    }
    out["eval"] = evf
    sft = st["sft"].metrics
    out["sft"] = {
        "steps": int(last_value(sft, "step") or 0), "final_loss": last_value(sft, "loss"),
        "eval_loss_start": first_value(sft, "eval_loss"), "eval_loss_end": last_value(sft, "eval_loss"),
    } if sft else None
    lab = data.doc("label", "label_summary.json")
    out["label"] = {**{k: lab.get(k) for k in (
        "pairs_judged", "pairs_written", "pairs_dropped", "position_consistency_rate", "first_position_rate",
        "tie_rate", "parse_failures", "judge_tokens", "judge_time_s")},
        **{k: lab[k] for k in ("members", "panel_agreement", "mean_disagreement") if k in lab}} if lab else None
    out["human_review"] = data.human_review
    out["rounds"] = data.rounds.get("rounds") if data.rounds else None
    rm_sum, rm_rows = data.doc("rm", "summary.json"), st["rm"].metrics
    rm_eval = rm_sum.get("eval") if isinstance(rm_sum.get("eval"), dict) else {}
    out["rm"] = {
        "eval_accuracy": number(rm_eval.get("accuracy")) if rm_eval else last_value(rm_rows, "eval_accuracy"),
        "eval_accuracy_start": first_value(rm_rows, "eval_accuracy"),
        "eval_margin_mean": number(rm_eval.get("margin_mean")) if rm_eval else None,
        "eval_pairs": rm_sum.get("eval_pairs"), "train_pairs": rm_sum.get("train_pairs"),
        "steps": rm_sum.get("steps", int(last_value(rm_rows, "step") or 0)),
    } if (rm_sum or rm_rows) else None
    ppo = st["ppo"].metrics
    if ppo:
        k = max(1, min(5, len(ppo) // 4))  # start / end = means over the first / last k iterations
        block: dict[str, Any] = {"iterations": int(last_value(ppo, "iteration") or len(ppo)), "window": k}
        for key in ("score_mean", "reward_mean", "kl", "entropy", "response_length", "eos_rate"):
            block[f"{key}_start"] = _window_mean(ppo, key, k, end=False)
            block[f"{key}_end"] = _window_mean(ppo, key, k, end=True)
        for key in ("val_reward_mean", "val_reward_gain", "val_reward_gain_se", "val_win_rate"):  # validation, if on
            block[f"{key}_first"] = first_value(ppo, key)
            block[f"{key}_last"] = last_value(ppo, key)
        out["ppo"] = block
    else:
        out["ppo"] = None
    audit = data.doc("audit", "audit.json")
    out["audit"] = {k: audit.get(k) for k in ("accuracy", "consistency_rate", "first_position_rate", "tie_rate",
                                              "pairs", "reliable", "reasons")} if audit else None
    out["judge"] = redact(ev.get("judge")) if isinstance(ev.get("judge"), dict) else None
    out["timings_s"] = data.timings or None
    out["warnings"] = warnings_of(data)
    out["problems"] = data.problems
    return out


__all__ = ["build_summary", "eval_figures", "warnings_of", "interval_verdict", "redact", "STAT_KEYS"]
