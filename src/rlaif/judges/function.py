"""A Python function as the judge: `module:function` or `file.py:function`.

Called as `f(prompts, firsts, seconds)` -> list of P(first better); a function with a fourth parameter (or
*args) also gets `references` (None where a prompt has no reference).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from typing import Any

from ..rewards.sources import load_callable
from .base import JudgeCall, check_prob


def _takes_references(fn) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) >= 4


class FunctionJudge:
    def __init__(self, spec: str):
        self.spec = spec
        self.fn = load_callable(spec)
        self.with_refs = _takes_references(self.fn)
        self.id = f"function:{spec}"

    def metadata(self) -> dict[str, Any]:
        return {"judge": self.id, "backend": "function", "function": self.spec}

    def prob_first_better(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
                          references: Sequence[str | None] | None = None) -> list[JudgeCall]:
        t0 = time.perf_counter()
        args = [list(prompts), list(firsts), list(seconds)]
        if self.with_refs:
            args.append(list(references) if references is not None else [None] * len(prompts))
        probs = [check_prob(p, self.id) for p in self.fn(*args)]
        if len(probs) != len(prompts):
            raise ValueError(f"judge {self.id} returned {len(probs)} probabilities for {len(prompts)} pairs")
        share = (time.perf_counter() - t0) / max(len(probs), 1)
        return [JudgeCall(p, None, 0, share, False) for p in probs]


__all__ = ["FunctionJudge"]
