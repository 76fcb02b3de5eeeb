"""One judge asked through several templates: a rubric's criteria, or several prompt templates ("prompt
diversity"), on one loaded backend (`local` or `api`: the template is swapped per call, the model stays).

Modes:
- `average`: every template judges every ordering; P(first better) = the weighted mean of the templates' (a
  rubric's criteria with their weights, `judge.template_variants` equally);
- `holistic`: every criterion judges every ordering (kept per row), and a final question that lists all criteria
  gives the verdict;
- `rotate`: one template per pair, picked by a hash of (question, the two answers as a set), so both orders of
  a pair see the same template and position debiasing still holds.
Each `JudgeCall` keeps every template's probability in `members` (named after the criterion or template), so a
label row stores them like a panel's members.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from .base import JudgeCall, PairwiseJudge
from .templates import JudgeTemplate


def rotation_index(prompt: str, first: str, second: str, n: int) -> int:
    """The template of a pair: the same for (first, second) and (second, first)."""
    a, b = sorted((first, second))
    digest = hashlib.sha256("\x00".join((prompt, a, b)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % n


class VariantJudge:
    def __init__(self, base: PairwiseJudge, variants: Sequence[tuple[str, JudgeTemplate, float]], mode: str,
                 final: JudgeTemplate | None = None):
        if not hasattr(base, "template"):
            raise ValueError(f"judge {base.id} takes no template: a rubric or template variants need the local or "
                             "api backend")
        if mode not in ("average", "holistic", "rotate"):
            raise ValueError(f"unknown variant mode {mode!r}")
        if mode == "holistic" and final is None:
            raise ValueError("holistic mode needs the final template")
        base_t: JudgeTemplate = base.template  # type: ignore[attr-defined]
        for name, t, _ in variants:
            if t.mode != base_t.mode or t.labels != base_t.labels:
                raise ValueError(f"template variant {name} ({t.source}) must have the mode and labels of "
                                 f"{base_t.source}: {t.mode} {t.labels} vs {base_t.mode} {base_t.labels}")
        names = [n for n, _, _ in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"template variant names must be unique, got {names}")
        total = sum(w for _, _, w in variants)
        if mode == "average" and not total > 0:
            raise ValueError("template variant weights must not all be 0")
        self.base, self.mode, self.final = base, mode, final
        self.variants = [(n, t, w / total if total > 0 else 0.0) for n, t, w in variants]
        self.id = f"{base.id}+{mode}({','.join(names)})"

    def metadata(self) -> dict[str, Any]:
        return {**self.base.metadata(), "judge": self.id, "variant_mode": self.mode,
                "variants": [{"name": n, "template": t.name, "template_sha256": t.sha256, "weight": round(w, 6)}
                             for n, t, w in self.variants],
                **({"final_template": self.final.name} if self.final is not None else {})}

    def _ask(self, template: JudgeTemplate, prompts, firsts, seconds, refs) -> list[JudgeCall]:
        original = self.base.template  # type: ignore[attr-defined]
        self.base.template = template  # type: ignore[attr-defined]
        try:
            return self.base.prob_first_better(prompts, firsts, seconds, refs)
        finally:
            self.base.template = original  # type: ignore[attr-defined]

    def prob_first_better(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
                          references: Sequence[str | None] | None = None) -> list[JudgeCall]:
        n = len(prompts)
        refs = list(references) if references is not None else [None] * n
        if self.mode == "rotate":
            return self._rotate(list(prompts), list(firsts), list(seconds), refs)
        per = [self._ask(t, prompts, firsts, seconds, refs) for _, t, _ in self.variants]
        final = self._ask(self.final, prompts, firsts, seconds, refs) if self.final is not None else None
        out = []
        for i in range(n):
            calls = [c[i] for c in per] + ([final[i]] if final is not None else [])
            errors = [c.error for c in calls if c.error is not None]
            prob = final[i].prob if final is not None else sum(w * c[i].prob for (_, _, w), c in zip(self.variants,
                                                                                                       per))
            members = {name: c[i].prob for (name, _, _), c in zip(self.variants, per)}
            if final is not None:
                members["overall"] = final[i].prob
            out.append(JudgeCall(
                prob=0.5 if errors else min(max(prob, 0.0), 1.0), raw=None, tokens=sum(c.tokens for c in calls),
                latency_s=sum(c.latency_s for c in calls), parse_failed=any(c.parse_failed for c in calls),
                error=errors[0] if errors else None, cost_usd=sum(c.cost_usd for c in calls),
                cached=all(c.cached for c in calls), members=members))
        return out

    def _rotate(self, prompts, firsts, seconds, refs) -> list[JudgeCall]:
        pick = [rotation_index(p, f, s, len(self.variants)) for p, f, s in zip(prompts, firsts, seconds)]
        out: list[JudgeCall | None] = [None] * len(prompts)
        for v, (name, template, _) in enumerate(self.variants):
            idx = [i for i, k in enumerate(pick) if k == v]
            if not idx:
                continue
            calls = self._ask(template, [prompts[i] for i in idx], [firsts[i] for i in idx],
                              [seconds[i] for i in idx], [refs[i] for i in idx])
            for i, c in zip(idx, calls):
                c.members = {name: c.prob}
                out[i] = c
        return out  # type: ignore[return-value]


__all__ = ["VariantJudge", "rotation_index"]
