"""AI-feedback judges: the pairwise protocol, position debiasing, templates and backends.

Backends: `local` (any causal LM, soft label from the next-token probabilities of the template's labels, or
pointwise scores), `api` (an OpenAI-compatible endpoint: soft labels from top logprobs, else a strict verdict
parser; retries, cost, an on-disk cache), `embedding` (reference-guided MiniLM similarity — an offline stand-in),
`function` (a Python callable). `make_judge(JudgeConfig)` builds one; `judge_pairs_both_orders` labels pairs in
both orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..config import ConfigError, field
from .base import (
    JudgeCall,
    JudgeCallError,
    PairVerdict,
    PairwiseJudge,
    combine_orders,
    judge_pairs_both_orders,
    verdict_stats,
)


@dataclass
class JudgeConfig:
    backend: Literal["local", "api", "embedding", "function"] = field(
        "local", help="local: a causal LM read at its next-token probabilities; api: an OpenAI-compatible chat "
        "completions endpoint (OpenAI, vLLM, llama.cpp, ...); embedding: reference-guided MiniLM similarity (an "
        "offline stand-in, not a quality judge); function: a Python callable")
    model: str = field("smollm2-135m-instruct", help="local: judge LM (built-in name, folder, .gguf or hub id); "
                       "api: the model name the server knows (e.g. gpt-4o-mini); embedding: encoder (default "
                       "minilm-l6 when this is the local default)")
    template: str = field("pairwise", help="local, api: built-in template (pairwise | pointwise) or a YAML path")
    function: str | None = field(None, help="function backend: `module:function` or `file.py:function` called as "
                                 "f(prompts, firsts, seconds[, references]) -> list of P(first better)")
    batch_size: int = field(8, help="judgements per forward pass")
    max_length: int = field(2048, help="local: judge prompt tokens kept (the end); embedding: tokens per text")
    pointwise_k: float = field(10.0, help="pointwise: P(first better) = sigmoid(k * (score1 - score2)), scores "
                               "in [0, 1]")
    embedding_k: float = field(20.0, help="embedding: weight of the similarity-to-reference difference")
    embedding_k2: float = field(5.0, help="embedding: weight of the question-relevance difference (tie-breaker)")
    min_label_mass: float = field(0.05, help="local, api: below this total probability on the labels the soft "
                                  "label is not used (local: a parse failure, P = 0.5; api: the verdict parser)")
    chain_of_thought: bool = field(False, help="local, api: generate a short rationale first, then ask for the "
                                   "verdict label alone and read its probabilities")
    max_cot_tokens: int = field(256, help="local, api: token budget of the rationale (chain_of_thought)")
    base_url: str = field("", help="api: endpoint base URL, e.g. http://127.0.0.1:8080/v1 (empty: "
                          "$OPENAI_BASE_URL, else https://api.openai.com/v1)")
    api_key_env: str = field("OPENAI_API_KEY", help="api: name of the environment variable that holds the API "
                             "key (the key itself never goes into a config, log or file); '' = no key needed")
    concurrency: int = field(8, help="api: requests in flight at once")
    max_retries: int = field(6, help="api: retries per request on 429, 5xx, timeouts, connection errors and "
                             "unreadable bodies; a call still failing is counted, never given a made-up label")
    timeout_s: float = field(60.0, help="api: seconds before a request counts as timed out")
    backoff_base_s: float = field(1.0, help="api: retry k waits U(0, min(backoff_max_s, backoff_base_s * 2^k)) "
                                  "seconds (full jitter)")
    backoff_max_s: float = field(60.0, help="api: cap of one backoff wait, Retry-After included")
    top_logprobs: int = field(20, help="api: alternatives per token asked for the soft label (0 = do not ask "
                              "for logprobs: strict verdict parser only)")
    max_verdict_tokens: int = field(8, help="api: completion budget of the verdict (the soft label is read at the "
                                    "first label; the rest leaves room for 'Answer: A' for the verdict parser)")
    extra_body: dict[str, Any] = field(
        default_factory=dict, help="api: extra JSON fields of the verdict request, for what a server offers beyond "
        "the OpenAI API, e.g. constrained decoding to the labels: llama.cpp {grammar: 'root ::= \"A\" | \"B\"'}, "
        "vLLM {guided_choice: [A, B]} (part of the cache key; not sent with a chain-of-thought rationale request)")
    price_input_per_mtok: float = field(0.0, help="api: USD per million prompt tokens (for cost_usd)")
    price_output_per_mtok: float = field(0.0, help="api: USD per million completion tokens (for cost_usd)")
    cache: bool = field(True, help="api: keep every completion in an on-disk cache so a rerun costs nothing")
    cache_dir: str = field("", help="api: cache folder (empty: $RLAIF_CACHE/judge, else ~/.cache/rlaif/judge)")

    def validate(self) -> None:
        if self.backend == "function" and not self.function:
            raise ConfigError("config key '<section>.judge.function': the function backend needs `module:function`")
        for key, low in (("batch_size", 1), ("max_cot_tokens", 1), ("concurrency", 1), ("max_retries", 0),
                         ("max_verdict_tokens", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"config key '<section>.judge.{key}': must be >= {low}")
        for key in ("timeout_s", "backoff_base_s", "backoff_max_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"config key '<section>.judge.{key}': must be > 0")
        if self.backoff_max_s < self.backoff_base_s:
            raise ConfigError("config key '<section>.judge.backoff_max_s': must be >= backoff_base_s")
        if not 0 <= self.top_logprobs <= 20:
            raise ConfigError("config key '<section>.judge.top_logprobs': must be in [0, 20] (the OpenAI limit)")
        for key in ("price_input_per_mtok", "price_output_per_mtok"):
            if getattr(self, key) < 0:
                raise ConfigError(f"config key '<section>.judge.{key}': must be >= 0")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ConfigError("config key '<section>.judge.base_url': must start with http:// or https://")


def make_judge(cfg: JudgeConfig, device="cpu", autocast=None) -> PairwiseJudge:
    if cfg.backend == "function":
        from .function import FunctionJudge

        return FunctionJudge(cfg.function or "")
    if cfg.backend == "embedding":
        from .embedding import EmbeddingJudge

        model = "minilm-l6" if cfg.model == "smollm2-135m-instruct" else cfg.model
        return EmbeddingJudge(model, k=cfg.embedding_k, k2=cfg.embedding_k2, device=device,
                              batch_size=cfg.batch_size, max_length=min(cfg.max_length, 512))
    from .templates import load_template

    if cfg.backend == "api":
        from .api import ApiJudge

        return ApiJudge(cfg.model, load_template(cfg.template), base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                        concurrency=cfg.concurrency, max_retries=cfg.max_retries, timeout_s=cfg.timeout_s,
                        backoff_base_s=cfg.backoff_base_s, backoff_max_s=cfg.backoff_max_s,
                        top_logprobs=cfg.top_logprobs, max_verdict_tokens=cfg.max_verdict_tokens,
                        price_input_per_mtok=cfg.price_input_per_mtok,
                        price_output_per_mtok=cfg.price_output_per_mtok, cache=cfg.cache,
                        cache_dir=cfg.cache_dir or None, chain_of_thought=cfg.chain_of_thought,
                        max_cot_tokens=cfg.max_cot_tokens, pointwise_k=cfg.pointwise_k,
                        min_label_mass=cfg.min_label_mass, extra_body=cfg.extra_body)
    from .local import LocalHFJudge

    return LocalHFJudge(cfg.model, load_template(cfg.template), device=device, batch_size=cfg.batch_size,
                        max_length=cfg.max_length, pointwise_k=cfg.pointwise_k, min_label_mass=cfg.min_label_mass,
                        autocast=autocast, chain_of_thought=cfg.chain_of_thought,
                        max_cot_tokens=cfg.max_cot_tokens)


__all__ = ["JudgeConfig", "make_judge", "JudgeCall", "JudgeCallError", "PairVerdict", "PairwiseJudge",
           "judge_pairs_both_orders", "combine_orders", "verdict_stats"]
