"""A panel of judges that answers as one (`judge.panel`): every member judges every ordering of every pair.

The panel's P(first better) for one ordering is the weighted mean of its members' (weights normalised to sum to
1). Because position debiasing is linear, the panel's debiased label is the same weighted mean of the members'
debiased labels: label = Σ w_m · ½(p_ab,m + 1 − p_ba,m). Each `JudgeCall` keeps every member's probability
(`members`), so `judge_pairs_both_orders` stores each member's soft label and consistency in the verdict and
`verdict_stats` gives per-member figures from the same calls.

Weights (`judge.panel_combine`): `mean` (equal), `weighted` (each member's `weight`), `audit` (each member's
accuracy on the gold set above chance, max(accuracy − 0.5, 0), read from an `audit.json` written by
`rlaif judge-audit` with the same panel: a member no better than a coin gets no vote).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .base import JudgeCall, PairwiseJudge


@dataclass
class PanelMember:
    name: str
    judge: PairwiseJudge
    weight: float = 1.0


def normalised(weights: Sequence[float]) -> list[float]:
    """(M,) non-negative weights -> (M,) weights summing to 1; at least one must be > 0."""
    total = float(sum(weights))
    if not total > 0 or any(w < 0 or not math.isfinite(w) for w in weights):
        raise ValueError(f"panel weights must be finite, >= 0 and not all 0, got {list(weights)}")
    return [w / total for w in weights]


def audit_weights(audit: dict, names: Sequence[str]) -> list[float]:
    """(M,) weights max(accuracy − 0.5, 0) from an audit.json's `members` figures, in `names` order."""
    members = audit.get("members") or {}
    missing = [n for n in names if n not in members]
    if missing:
        raise ValueError(f"the audit has no figures for panel member(s) {', '.join(missing)} (audit the same "
                         "panel with `rlaif judge-audit` first)")
    return [max(float(members[n]["accuracy"]) - 0.5, 0.0) for n in names]


class PanelJudge:
    """Several `PairwiseJudge`s as one; `id` is `panel(<member>,...)`."""

    def __init__(self, members: Sequence[PanelMember], combine: str = "mean"):
        if len(members) < 2:
            raise ValueError("a judge panel needs at least two members")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ValueError(f"panel member names must be unique, got {names}")
        self.members = list(members)
        self.combine = combine
        self.weights = normalised([m.weight for m in members])
        self.id = "panel(" + ",".join(names) + ")"

    def metadata(self) -> dict[str, Any]:
        modes = {m.judge.metadata().get("mode") for m in self.members}
        return {"judge": self.id, "backend": "panel", "combine": self.combine,
                **({"mode": "pointwise"} if modes == {"pointwise"} else {}),
                "members": [{"name": m.name, "weight": round(w, 6), **m.judge.metadata()}
                            for m, w in zip(self.members, self.weights)]}

    def score(self, prompts: Sequence[str], responses: Sequence[str],
              references: Sequence[str | None] | None = None) -> list[float]:
        """Pointwise panels (every member scores answers alone): the weighted mean of the members' scores."""
        per = [m.judge.score(prompts, responses, references) for m in self.members]  # type: ignore[attr-defined]
        return [sum(w * s[i] for w, s in zip(self.weights, per)) for i in range(len(prompts))]

    def prob_first_better(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
                          references: Sequence[str | None] | None = None) -> list[JudgeCall]:
        per_member = []
        for m in self.members:
            calls = m.judge.prob_first_better(prompts, firsts, seconds, references)
            if len(calls) != len(prompts):
                raise ValueError(f"panel member {m.name} returned {len(calls)} judgements for {len(prompts)}")
            per_member.append(calls)
        out = []
        for i in range(len(prompts)):
            calls = [c[i] for c in per_member]
            errors = [f"{m.name}: {c.error}" for m, c in zip(self.members, calls) if c.error is not None]
            prob = sum(w * c.prob for w, c in zip(self.weights, calls))
            out.append(JudgeCall(
                prob=0.5 if errors else min(max(prob, 0.0), 1.0), raw=None,
                tokens=sum(c.tokens for c in calls), latency_s=sum(c.latency_s for c in calls),
                parse_failed=any(c.parse_failed for c in calls), error=errors[0] if errors else None,
                cost_usd=sum(c.cost_usd for c in calls), cached=all(c.cached for c in calls),
                members={m.name: c.prob for m, c in zip(self.members, calls)}))
        return out


__all__ = ["PanelJudge", "PanelMember", "normalised", "audit_weights"]
