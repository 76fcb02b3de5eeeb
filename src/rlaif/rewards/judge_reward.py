"""An AI judge as the PPO reward (direct RLAIF, no reward model in between).

Two modes, both normalised to [-1, 1]:

- pointwise: the judge scores each answer alone, s in [0, 1]  ->  reward = 2s - 1.
- pairwise: the judge compares the policy's answer with the reference policy's answer to the same prompt, in
  both orders (position-debiased, Lee et al. 2023):  p = P(policy better) = ½(p_ab + 1 - p_ba)  ->  reward = 2p - 1.
  0 means "as good as the frozen reference policy"; the baseline answers come from `baseline_fn` (in `rlaif ppo`:
  the reference model, greedy by default, one answer per prompt id, cached for the whole run).

The rows' reference answers are shown to the judge when `use_references` (the embedding judge needs them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..data.prompts import PromptRow
from ..judges.base import PairwiseJudge, judge_pairs_both_orders


def judge_is_pointwise(judge: PairwiseJudge) -> bool:
    return hasattr(judge, "score") and judge.metadata().get("mode") == "pointwise"


class JudgeReward:
    """`source(prompts, responses, rows=...) -> (b,)` rewards in [-1, 1] from a judge."""

    def __init__(self, judge: PairwiseJudge, mode: str, *, use_references: bool = True,
                 baseline_fn: Callable[[list[PromptRow]], list[str]] | None = None):
        if mode == "pointwise" and not judge_is_pointwise(judge):
            raise ValueError(f"judge {judge.id} cannot score answers alone: pointwise judge rewards need a "
                             "pointwise template (e.g. judge.backend=local judge.template=pointwise); "
                             "or use judge_mode=pairwise")
        if mode == "pairwise" and baseline_fn is None:
            raise ValueError("a pairwise judge reward needs the reference policy's answers (baseline_fn)")
        if mode not in ("pointwise", "pairwise"):
            raise ValueError(f"unknown judge reward mode {mode!r} (pointwise | pairwise)")
        self.judge, self.mode, self.use_references, self.baseline_fn = judge, mode, use_references, baseline_fn
        self.name = f"judge[{mode}]({judge.id})"
        self._baselines: dict[str, str] = {}
        self.last_stats: dict[str, float] = {}

    def baselines(self, rows: Sequence[PromptRow]) -> list[str]:
        """The reference policy's answer per prompt id, generated once (in one batch for the new ids)."""
        assert self.baseline_fn is not None
        new = list({r.id: r for r in rows if r.id not in self._baselines}.values())
        if new:
            self._baselines.update(zip((r.id for r in new), self.baseline_fn(new)))
        return [self._baselines[r.id] for r in rows]

    def __call__(self, prompts: Sequence[str], responses: Sequence[str],
                 rows: Sequence[PromptRow] | None = None) -> torch.Tensor:
        if rows is None or len(rows) != len(responses):
            raise ValueError(f"{self.name} needs the prompt rows of the rollout (ids, references)")
        refs = [r.reference for r in rows] if self.use_references else None
        if self.mode == "pointwise":
            scores = self.judge.score(list(prompts), list(responses), refs)  # type: ignore[attr-defined]
            return torch.tensor([2.0 * float(s) - 1.0 for s in scores], dtype=torch.float32)
        base = self.baselines(rows)
        verdicts = judge_pairs_both_orders(self.judge, list(prompts), list(responses), base, refs)
        self.last_stats = {
            "judge_consistency": sum(v.consistent for v in verdicts) / len(verdicts),
            "judge_win_rate_vs_reference": sum((v.label_prob > 0.5) + 0.5 * v.tie for v in verdicts) / len(verdicts),
        }
        return torch.tensor([2.0 * v.label_prob - 1.0 for v in verdicts], dtype=torch.float32)


__all__ = ["JudgeReward", "judge_is_pointwise"]
