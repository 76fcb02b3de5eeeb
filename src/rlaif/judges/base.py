"""The judge protocol and position-debiased pairwise labelling (Lee et al. 2023, arXiv 2309.00267).

A pairwise judge answers one question for one ordering: the probability that the FIRST answer shown is better
than the SECOND. Asking in both orders and averaging cancels a judge's position bias:

    label_prob = P(a better) = ½ · (p_ab + 1 − p_ba)

where p_ab = P(first better | a shown first) and p_ba = P(first better | b shown first).

Backends take whole lists, so a backend decides its own batching: a local model runs batched forward passes,
an API backend can fan the calls out concurrently (e.g. `asyncio.run(gather(...))` inside
`prob_first_better`) and still return one `JudgeCall` per pair, in order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable


@dataclass
class JudgeCall:
    """One judgement of one ordering."""

    prob: float  # P(first answer better), in [0, 1]
    raw: str | None = None  # the judge's raw output (top token, completion text); None when there is none
    tokens: int = 0  # tokens the judge read and wrote for this call
    latency_s: float = 0.0  # wall time attributed to this call
    parse_failed: bool = False  # output could not be read as a verdict (prob is then 0.5)
    error: str | None = None  # the call failed (e.g. an API call past its retries): prob means nothing then
    cost_usd: float = 0.0  # what this call cost (API judges; 0 when served from a cache)
    cached: bool = False  # served from a cache: no request was sent
    source: str | None = None  # where the label came from, e.g. "logprobs" or "verdict" (API judges)
    label_mass: float | None = None  # probability the judge put on the labels at the verdict (local, api)
    members: dict[str, float] | None = None  # a panel's calls: each member's P(first better)


@dataclass
class Generated:
    """One free-text reply of a judge backend that writes (local, api): a critique, a revision, a rationale."""

    text: str | None  # None: the call failed (see error)
    tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    cost_usd: float = 0.0


@runtime_checkable
class PairwiseJudge(Protocol):
    """What every backend provides. `id` names the judge in labels; `metadata()` goes into every row."""

    id: str

    def prob_first_better(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
                          references: Sequence[str | None] | None = None) -> list[JudgeCall]:
        ...

    def metadata(self) -> dict[str, Any]:
        ...


@dataclass
class PairVerdict:
    """Both orders of one pair (a, b), debiased."""

    label_prob: float  # P(a better) = ½(p_ab + 1 − p_ba)
    p_ab: float  # P(first better) with a first
    p_ba: float  # P(first better) with b first
    consistent: bool  # the same winner in both orders (both ties count as consistent)
    first_ab: bool | None  # the first position won with a first (None: a tie, 0.5)
    first_ba: bool | None  # the first position won with b first (None: a tie)
    tokens: int
    latency_s: float
    parse_failures: int  # 0, 1 or 2
    raw_ab: str | None = None
    raw_ba: str | None = None
    errors: int = 0  # failed calls (0, 1 or 2): such a verdict is not a label and must not be written
    error: str | None = None  # the first failure's message
    cost_usd: float = 0.0
    cached_calls: int = 0  # calls served from a cache (0, 1 or 2)
    source_ab: str | None = None  # where each order's label came from (API judges: logprobs | verdict)
    source_ba: str | None = None
    mass_ab: float | None = None  # each order's probability mass on the labels (local, api judges)
    mass_ba: float | None = None
    # a panel's verdicts: per member {label_prob, p_ab, p_ba, consistent}; label_prob is their weighted mean
    members: dict[str, dict[str, Any]] | None = None

    @property
    def disagreement(self) -> float | None:
        """A panel's spread: max − min of its members' P(a better); None for a single judge."""
        return disagreement(self.members) if self.members else None

    @property
    def tie(self) -> bool:
        return abs(self.label_prob - 0.5) < 1e-9

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _winner(p_first: float, first: str, second: str) -> str:
    if p_first > 0.5:
        return first
    if p_first < 0.5:
        return second
    return "tie"


def check_prob(p: float, who: str) -> float:
    p = float(p)
    if not math.isfinite(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"judge {who} returned {p!r}; P(first better) must be a number in [0, 1]")
    return p


def combine_orders(p_ab: float, p_ba: float) -> tuple[float, bool, bool | None, bool | None]:
    """(label_prob, consistent, first_ab, first_ba) from the two one-order probabilities."""
    label = 0.5 * (p_ab + 1.0 - p_ba)
    consistent = _winner(p_ab, "a", "b") == _winner(p_ba, "b", "a")
    first_ab = None if p_ab == 0.5 else p_ab > 0.5
    first_ba = None if p_ba == 0.5 else p_ba > 0.5
    return label, consistent, first_ab, first_ba


def member_verdicts(p_ab: dict[str, float], p_ba: dict[str, float]) -> dict[str, dict[str, Any]]:
    """A panel's members, each debiased on its own: P(a better) = ½(p_ab + 1 − p_ba) and its consistency."""
    out = {}
    for name in p_ab:
        label, consistent, _, _ = combine_orders(p_ab[name], p_ba[name])
        out[name] = {"label_prob": label, "p_ab": p_ab[name], "p_ba": p_ba[name], "consistent": consistent}
    return out


def disagreement(members: dict[str, dict[str, Any]]) -> float:
    """Spread of a panel's soft labels: max − min of P(a better) over its members, in [0, 1]."""
    labels = [m["label_prob"] for m in members.values()]
    return max(labels) - min(labels)


class JudgeCallError(RuntimeError):
    """Judge calls failed (e.g. an API past its retry budget); no label was made up for them."""


def judge_pairs_both_orders(judge: PairwiseJudge, prompts: Sequence[str], a: Sequence[str], b: Sequence[str],
                            references: Sequence[str | None] | None = None,
                            on_error: Literal["raise", "keep"] = "raise") -> list[PairVerdict]:
    """Judge every (a_i, b_i) as (a, b) and as (b, a) in one call of each order; one verdict per pair.

    A failed call (`JudgeCall.error`) raises `JudgeCallError` (on_error="raise"), or is kept in the verdict's
    `errors`/`error` (on_error="keep") for a caller that leaves such pairs out, as `rlaif label` does.
    """
    n = len(prompts)
    if not len(a) == len(b) == n or (references is not None and len(references) != n):
        raise ValueError("judge_pairs_both_orders: prompts, a, b (and references) must have the same length")
    if n == 0:
        return []
    refs = list(references) if references is not None else None
    calls = judge.prob_first_better(list(prompts) * 2, list(a) + list(b), list(b) + list(a),
                                    refs * 2 if refs is not None else None)
    if len(calls) != 2 * n:
        raise ValueError(f"judge {judge.id} returned {len(calls)} judgements for {2 * n} orderings")
    failed = [c.error for c in calls if c.error is not None]
    if failed and on_error == "raise":
        raise JudgeCallError(f"judge {judge.id}: {len(failed)} of {2 * n} calls failed (first: {failed[0]})")
    out = []
    for i in range(n):
        ab, ba = calls[i], calls[n + i]
        p_ab, p_ba = check_prob(ab.prob, judge.id), check_prob(ba.prob, judge.id)
        label, consistent, first_ab, first_ba = combine_orders(p_ab, p_ba)
        errors = [c.error for c in (ab, ba) if c.error is not None]
        out.append(PairVerdict(label, p_ab, p_ba, consistent, first_ab, first_ba, ab.tokens + ba.tokens,
                               ab.latency_s + ba.latency_s, int(ab.parse_failed) + int(ba.parse_failed),
                               ab.raw, ba.raw, errors=len(errors), error=errors[0] if errors else None,
                               cost_usd=ab.cost_usd + ba.cost_usd, cached_calls=int(ab.cached) + int(ba.cached),
                               source_ab=ab.source, source_ba=ba.source, mass_ab=ab.label_mass,
                               mass_ba=ba.label_mass,
                               members=member_verdicts(ab.members, ba.members)
                               if ab.members is not None and ba.members is not None else None))
    return out


def _side(p: float) -> int:
    return 0 if abs(p - 0.5) < 1e-9 else (1 if p > 0.5 else -1)


def member_figures(members: Sequence[dict[str, dict[str, Any]] | None], panel_labels: Sequence[float],
                   correct_is_a: bool = False) -> dict[str, Any]:
    """A panel's figures over N pairs from each pair's `members` ({name: {label_prob, p_ab, p_ba, consistent}},
    label_prob = P(a better)) and the panel's own P(a better). Per member: position consistency, first-position
    rate, agreement with the panel's winner, and (correct_is_a: `a` is the better answer of every pair, as in an
    audit) accuracy; for the panel: the share of pairs where every member picks the same winner (ties count as a
    side) and the mean disagreement (max − min of the members' labels). Empty when no pair is a panel's."""
    pairs = [(m, p) for m, p in zip(members, panel_labels) if m]
    if not pairs:
        return {}
    figures = {}
    for name in dict.fromkeys(name for m, _ in pairs for name in m):  # template rotation: not every pair has all
        ms = [(m[name], p) for m, p in pairs if name in m]
        decided = [f for m, _ in ms for f in (_side(m["p_ab"]), _side(m["p_ba"])) if f != 0]
        fig = {
            "consistency_rate": sum(bool(m["consistent"]) for m, _ in ms) / len(ms),
            "first_position_rate": sum(f > 0 for f in decided) / len(decided) if decided else None,
            "agreement_with_panel": sum(_side(m["label_prob"]) == _side(p) for m, p in ms) / len(ms),
        }
        if correct_is_a:
            fig["accuracy"] = sum(m["label_prob"] > 0.5 for m, _ in ms) / len(ms)
        figures[name] = fig
    unanimous = sum(len({_side(x["label_prob"]) for x in m.values()}) == 1 for m, _ in pairs)
    return {"members": figures, "panel_agreement": unanimous / len(pairs),
            "mean_disagreement": sum(disagreement(m) for m, _ in pairs) / len(pairs)}


def verdict_stats(verdicts: Sequence[PairVerdict], correct_is_a: bool = False) -> dict[str, Any]:
    """Position-consistency rate, first-position preference rate (over decided orderings), tie rate, totals;
    for a panel also `members`, `panel_agreement` and `mean_disagreement` (`member_figures`)."""
    n = len(verdicts)
    decided = [f for v in verdicts for f in (v.first_ab, v.first_ba) if f is not None]
    return {
        "pairs": n,
        "consistency_rate": sum(v.consistent for v in verdicts) / n if n else None,
        "first_position_rate": sum(decided) / len(decided) if decided else None,
        "tie_rate": sum(v.tie for v in verdicts) / n if n else None,
        "parse_failures": sum(v.parse_failures for v in verdicts),
        "errors": sum(v.errors for v in verdicts),
        "tokens": sum(v.tokens for v in verdicts),
        "cost_usd": round(sum(v.cost_usd for v in verdicts), 6),
        "judge_time_s": round(sum(v.latency_s for v in verdicts), 3),
        **member_figures([v.members for v in verdicts], [v.label_prob for v in verdicts], correct_is_a),
    }


__all__ = ["Generated", "JudgeCall", "JudgeCallError", "PairwiseJudge", "PairVerdict", "judge_pairs_both_orders",
           "combine_orders", "verdict_stats", "check_prob", "member_verdicts", "disagreement",
           "member_figures"]
