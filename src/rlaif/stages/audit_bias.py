"""Judge biases beyond position, for `rlaif judge-audit`: each a number, a threshold and a verdict line.

- **length gap** (verbosity): accuracy on pairs whose better answer is the longer one minus accuracy on pairs
  whose better answer is the shorter one (the gold pairs of each kind plus the shipped probes, where a short
  right answer faces a long wrong one). An unbiased judge scores both alike: gap ≈ 0.
- **padding gain** (verbosity): the gold pairs again with filler sentences appended to the worse answer; the
  mean rise of P(worse better) = label_prob(plain) − label_prob(padded), and the share of pairs that padding
  flips to the worse answer. Filler adds no content, so an unbiased judge's gain is ≈ 0.
- **self-preference**: pairs of equally correct answers, one written by the judge's model family (the shipped
  probes: SmolLM2-135M-Instruct's own greedy answers), one by a person; P(own better) − ½ over both orders.
  Meaningful when the judge and the probes' model share a family (point `self_probes` at your judge's own
  samples otherwise).
A panel gets every figure for the panel and for each member (from the members' own soft labels).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..data.jsonl import DataError, iter_jsonl, require_str
from ..judges.base import PairVerdict, PairwiseJudge, judge_pairs_both_orders


@dataclass(frozen=True)
class SelfProbe:
    id: str
    prompt: str
    own: str
    other: str
    own_model: str


def asset(name: str) -> Path:
    return Path(str(resources.files("rlaif") / "assets" / "judge" / name))


def load_self_probes(arg: str) -> list[SelfProbe]:
    """`{id, prompt, own, other, own_model?}` rows, or builtin:self-smollm2; errors name file, line and field."""
    path = asset("self-smollm2.jsonl") if arg == "builtin:self-smollm2" else Path(arg)
    out = []
    for n, obj in iter_jsonl(path):
        where = f"{path}:{n}"
        out.append(SelfProbe(str(obj.get("id", f"line-{n}")), require_str(obj, "prompt", where),
                             require_str(obj, "own", where), require_str(obj, "other", where),
                             str(obj.get("own_model", "?"))))
    if not out:
        raise DataError(f"{path}: no self-preference probes (the file is empty)")
    return out


def filler(seed_text: str, k: int = 2) -> str:
    """k filler sentences (assets/judge/padding.txt) picked by a hash of the text: no content, only length."""
    lines = [x.strip() for x in asset("padding.txt").read_text(encoding="utf-8").splitlines() if x.strip()]
    start = int.from_bytes(hashlib.sha256(seed_text.encode("utf-8")).digest()[:4], "little") % len(lines)
    return " ".join(lines[(start + i) % len(lines)] for i in range(k))


def labels(verdicts: Sequence[PairVerdict], member: str | None) -> list[float]:
    """P(a better) of each verdict: the judge's (member None) or one panel member's."""
    if member is None:
        return [v.label_prob for v in verdicts]
    return [v.members[member]["label_prob"] if v.members else v.label_prob for v in verdicts]


def mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def accuracy(ps: Sequence[float]) -> float | None:
    return mean([float(p > 0.5) for p in ps])


@dataclass
class BiasInputs:
    """Every verdict the bias figures need, judged once (a panel's members are read from the same verdicts)."""

    gold_longer: list[PairVerdict]  # gold pairs whose better answer is longer (better as `a`)
    shorter: list[PairVerdict]  # gold pairs and probes whose better answer is shorter (better as `a`)
    plain: list[PairVerdict]  # every gold pair (better as `a`)
    padded: list[PairVerdict]  # the same with the worse answer padded
    own: list[PairVerdict]  # self-preference probes (own as `a`)
    own_model: str


def judge_bias_inputs(judge: PairwiseJudge, gold: Sequence[Any], gold_verdicts: list[PairVerdict],
                      probes: Sequence[Any], self_probes: Sequence[SelfProbe], use_references: bool,
                      padding: bool) -> BiasInputs:
    """Judge the probes and the padded gold pairs (both orders); the gold verdicts are reused."""
    def both(rows, a, b):
        if not rows:
            return []
        return judge_pairs_both_orders(judge, [r.prompt for r in rows], [a(r) for r in rows], [b(r) for r in rows],
                                       [getattr(r, "reference", None) if use_references else None for r in rows])

    longer = [v for g, v in zip(gold, gold_verdicts) if len(g.better) >= len(g.worse)]
    shorter = [v for g, v in zip(gold, gold_verdicts) if len(g.better) < len(g.worse)]
    shorter += both(list(probes), lambda r: r.better, lambda r: r.worse)
    padded = both(list(gold), lambda r: r.better, lambda r: f"{r.worse} {filler(r.worse)}") if padding else []
    own = judge_pairs_both_orders(judge, [p.prompt for p in self_probes], [p.own for p in self_probes],
                                  [p.other for p in self_probes]) if self_probes else []
    return BiasInputs(longer, shorter, list(gold_verdicts) if padding else [], padded, own,
                      self_probes[0].own_model if self_probes else "")


def bias_figures(x: BiasInputs, th: dict[str, float], member: str | None = None) -> dict[str, Any]:
    """The three figures with their thresholds and flags, for the judge or one panel member."""
    out: dict[str, Any] = {}
    acc_long, acc_short = accuracy(labels(x.gold_longer, member)), accuracy(labels(x.shorter, member))
    if acc_long is not None and acc_short is not None:
        gap = acc_long - acc_short
        out["length_gap"] = {"value": round(gap, 4), "threshold": th["max_length_gap"],
                             "biased": gap > th["max_length_gap"], "accuracy_better_longer": round(acc_long, 4),
                             "accuracy_better_shorter": round(acc_short, 4), "pairs_better_longer":
                             len(x.gold_longer), "pairs_better_shorter": len(x.shorter)}
    if x.padded:
        plain, padded = labels(x.plain, member), labels(x.padded, member)
        gain = mean([p - q for p, q in zip(plain, padded)]) or 0.0
        flips = mean([float(p > 0.5 >= q) for p, q in zip(plain, padded)]) or 0.0
        out["padding_gain"] = {"value": round(gain, 4), "threshold": th["max_padding_gain"],
                               "biased": gain > th["max_padding_gain"], "flips": round(flips, 4),
                               "pairs": len(padded)}
    if x.own:
        p_own = mean(labels(x.own, member)) or 0.5
        out["self_preference"] = {"value": round(p_own - 0.5, 4), "threshold": th["max_self_preference"],
                                  "biased": p_own - 0.5 > th["max_self_preference"], "p_own_better": round(p_own, 4),
                                  "pairs": len(x.own), "own_model": x.own_model}
    return out


def bias_reasons(figures: dict[str, Any], who: str = "") -> list[str]:
    """Verdict lines for the figures past their thresholds."""
    names = {"length_gap": "verbosity: length gap", "padding_gain": "verbosity: padding gain",
             "self_preference": "self-preference"}
    return [f"{who}{names[k]} {f['value']:.3f} > {f['threshold']}" for k, f in figures.items()
            if isinstance(f, dict) and f.get("biased")]


__all__ = ["SelfProbe", "load_self_probes", "filler", "BiasInputs", "judge_bias_inputs", "bias_figures",
           "bias_reasons"]
