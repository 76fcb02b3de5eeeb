"""AI-feedback judges: the pairwise protocol, position debiasing, templates and backends.

Backends: `local` (any causal LM, soft label from the next-token probabilities of the template's labels, or
pointwise scores), `embedding` (reference-guided MiniLM similarity — an offline stand-in), `function` (a Python
callable). `make_judge(JudgeConfig)` builds one; `judge_pairs_both_orders` labels pairs in both orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, field
from .base import (
    JudgeCall,
    PairVerdict,
    PairwiseJudge,
    combine_orders,
    judge_pairs_both_orders,
    verdict_stats,
)


@dataclass
class JudgeConfig:
    backend: Literal["local", "embedding", "function"] = field(
        "local", help="local: a causal LM read at its next-token probabilities; embedding: reference-guided "
        "MiniLM similarity (an offline stand-in, not a quality judge); function: a Python callable")
    model: str = field("smollm2-135m-instruct", help="local: judge LM (built-in name, folder, .gguf or hub id); "
                       "embedding: encoder (default minilm-l6 when this is the local default)")
    template: str = field("pairwise", help="local: built-in template (pairwise | pointwise) or a YAML path")
    function: str | None = field(None, help="function backend: `module:function` or `file.py:function` called as "
                                 "f(prompts, firsts, seconds[, references]) -> list of P(first better)")
    batch_size: int = field(8, help="judgements per forward pass")
    max_length: int = field(2048, help="local: judge prompt tokens kept (the end); embedding: tokens per text")
    pointwise_k: float = field(10.0, help="pointwise: P(first better) = sigmoid(k * (score1 - score2)), scores "
                               "in [0, 1]")
    embedding_k: float = field(20.0, help="embedding: weight of the similarity-to-reference difference")
    embedding_k2: float = field(5.0, help="embedding: weight of the question-relevance difference (tie-breaker)")
    min_label_mass: float = field(1e-6, help="local: below this total probability on the labels the call counts "
                                  "as a parse failure (P = 0.5)")

    def validate(self) -> None:
        if self.backend == "function" and not self.function:
            raise ConfigError("config key '<section>.judge.function': the function backend needs `module:function`")
        if self.batch_size < 1:
            raise ConfigError("config key '<section>.judge.batch_size': must be >= 1")


def make_judge(cfg: JudgeConfig, device="cpu", autocast=None) -> PairwiseJudge:
    if cfg.backend == "function":
        from .function import FunctionJudge

        return FunctionJudge(cfg.function or "")
    if cfg.backend == "embedding":
        from .embedding import EmbeddingJudge

        model = "minilm-l6" if cfg.model == "smollm2-135m-instruct" else cfg.model
        return EmbeddingJudge(model, k=cfg.embedding_k, k2=cfg.embedding_k2, device=device,
                              batch_size=cfg.batch_size, max_length=min(cfg.max_length, 512))
    from .local import LocalHFJudge
    from .templates import load_template

    return LocalHFJudge(cfg.model, load_template(cfg.template), device=device, batch_size=cfg.batch_size,
                        max_length=cfg.max_length, pointwise_k=cfg.pointwise_k, min_label_mass=cfg.min_label_mass,
                        autocast=autocast)


__all__ = ["JudgeConfig", "make_judge", "JudgeCall", "PairVerdict", "PairwiseJudge", "judge_pairs_both_orders",
           "combine_orders", "verdict_stats"]
