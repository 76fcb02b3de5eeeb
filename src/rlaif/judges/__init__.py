"""AI-feedback judges: the pairwise protocol, position debiasing, templates and backends.

Backends: `local` (any causal LM, soft label from the next-token probabilities of the template's labels, or
pointwise scores), `api` (an OpenAI-compatible endpoint: soft labels from top logprobs, else a strict verdict
parser; retries, cost, an on-disk cache), `embedding` (reference-guided MiniLM similarity — an offline stand-in),
`function` (a Python callable); `panel` (several of them as one, `judge.panel`, judges/panel.py).
`make_judge(JudgeConfig)` builds one; `judge_pairs_both_orders` labels pairs in
both orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..config import ConfigError, field, from_dict, to_dict
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
    template: str = field("pairwise", help="local, api: built-in template (pairwise | pointwise | pairwise-fewshot | "
                          "pairwise-rubric) or a YAML path")
    template_variants: list[str] = field(
        default_factory=list, help="local, api: more templates (names or YAML paths, same mode and labels) asked "
        "beside `template`, for prompt diversity; see template_combine")
    constitution: str = field("", help="local, api: judge by a constitution's principles (YAML or builtin:default): "
                              "one principle per pair, drawn by a hash of the pair (the same in both orders), as in "
                              "Constitutional AI's feedback phase; '' = off")
    template_combine: Literal["average", "rotate"] = field(
        "average", help="with template_variants: average = every template judges every pair (mean P); rotate = one "
        "template per pair (the same in both orders)")
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
    panel: list[dict[str, Any]] = field(
        default_factory=list, help="a judge panel: two or more members, each a mapping of this section's keys "
        "(on top of this section's values) plus `name` and `weight`, e.g. [{name: minilm, backend: embedding}, "
        "{name: smol, backend: local}]; every pair is judged by every member in both orders")
    panel_combine: Literal["mean", "weighted", "audit"] = field(
        "mean", help="panel: P(first better) = mean of the members', weighted by each member's `weight`, or by its "
        "gold-set accuracy above chance, max(accuracy - 0.5, 0), read from panel_audit")
    panel_audit: str = field("", help="panel_combine=audit: an audit.json of `rlaif judge-audit` with the same "
                             "panel (the pipeline uses its own audit stage's)")

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
        if self.panel:
            panel_members(self)
        if self.constitution and self.backend not in ("local", "api"):
            raise ConfigError("config key '<section>.judge.constitution': only the local and api backends take "
                              "templates")
        if self.constitution and self.template_variants:
            raise ConfigError("config key '<section>.judge.constitution': use it or template_variants, not both")
        if self.template_variants and self.backend not in ("local", "api"):
            raise ConfigError("config key '<section>.judge.template_variants': only the local and api backends "
                              "take templates")


def panel_members(cfg: JudgeConfig) -> list[tuple[str, float, JudgeConfig]]:
    """(name, weight, config) of each panel member: this section's keys overridden by the member's mapping."""
    if len(cfg.panel) < 2:
        raise ConfigError("config key '<section>.judge.panel': a panel needs at least two members")
    base = {k: v for k, v in to_dict(cfg, redact=False).items() if k not in ("panel", "panel_combine", "panel_audit")}
    out = []
    for i, member in enumerate(cfg.panel):
        key = f"<section>.judge.panel[{i}]"
        if not isinstance(member, dict):
            raise ConfigError(f"config key '{key}': expected a mapping of judge keys, got {member!r}")
        member = dict(member)
        for nested in ("panel", "panel_combine", "panel_audit"):
            if nested in member:
                raise ConfigError(f"config key '{key}.{nested}': a panel member cannot be a panel")
        name = member.pop("name", None) or f"{member.get('backend', cfg.backend)}-{i}"
        weight = member.pop("weight", 1.0)
        if not isinstance(name, str):
            raise ConfigError(f"config key '{key}.name': expected str, got {name!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"config key '{key}.weight': expected a number >= 0, got {weight!r}")
        out.append((name, float(weight), from_dict(JudgeConfig, {**base, **member}, prefix=key + ".")))
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"config key '<section>.judge.panel': member names must be unique, got {names}")
    if cfg.panel_combine == "weighted" and not any(w > 0 for _, w, _ in out):
        raise ConfigError("config key '<section>.judge.panel': panel_combine=weighted needs a weight > 0")
    return out


def make_judge(cfg: JudgeConfig, device="cpu", autocast=None, key: str = "judge") -> PairwiseJudge:
    """The judge of `cfg`; `key` is its config section (e.g. `label.judge`), for errors found while building."""
    if cfg.panel:
        return make_panel(cfg, device, autocast, key)
    if cfg.backend == "function":
        from .function import FunctionJudge

        return FunctionJudge(cfg.function or "")
    if cfg.backend == "embedding":
        from .embedding import EmbeddingJudge

        model = "minilm-l6" if cfg.model == "smollm2-135m-instruct" else cfg.model
        return EmbeddingJudge(model, k=cfg.embedding_k, k2=cfg.embedding_k2, device=device,
                              batch_size=cfg.batch_size, max_length=min(cfg.max_length, 512))
    from .templates import load_template

    template = load_template(cfg.template)
    if (cfg.template_variants or cfg.constitution) and template.rubric:
        raise ConfigError(f"config key '{key}.template': a rubric template judges its criteria already; drop "
                          "template_variants / constitution or use another template")
    principles = ()
    if cfg.constitution:
        from ..data.constitution import load_constitution
        from ..data.jsonl import DataError

        try:
            principles = load_constitution(cfg.constitution).principles
        except DataError as e:
            raise ConfigError(f"config key '{key}.constitution': {e}") from None
    others = [load_template(t) for t in cfg.template_variants]
    for t in others:  # before minutes of model loading
        if (t.mode, t.labels) != (template.mode, template.labels):
            raise ConfigError(f"config key '{key}.template_variants': {t.source} has mode {t.mode} and labels "
                              f"{list(t.labels)}; `template` {template.source} has {template.mode} and "
                              f"{list(template.labels)}: variants must share them")
    base = make_backend(cfg, template, device, autocast)
    if principles:
        from .templates import principle_templates
        from .variants import VariantJudge

        return VariantJudge(base, principle_templates(template, principles), "rotate")
    if template.rubric:
        from .templates import variant_templates
        from .variants import VariantJudge

        variants, final = variant_templates(template)
        return VariantJudge(base, variants, "holistic" if final is not None else "average", final)
    if cfg.template_variants:
        from .variants import VariantJudge

        named = [(template.name, template, 1.0)] + [(t.name, t, 1.0) for t in others]
        if len({n for n, _, _ in named}) != len(named):  # two files with one `name`: tell them apart by position
            named = [(f"{i}:{n}", t, w) for i, (n, t, w) in enumerate(named)]
        try:
            return VariantJudge(base, named, cfg.template_combine)
        except ValueError as e:
            raise ConfigError(f"config key '{key}.template_variants': {e}") from None
    return base


def make_backend(cfg: JudgeConfig, template, device="cpu", autocast=None) -> PairwiseJudge:
    """The local or api backend with one template."""
    if cfg.backend == "api":
        from .api import ApiJudge

        return ApiJudge(cfg.model, template, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                        concurrency=cfg.concurrency, max_retries=cfg.max_retries, timeout_s=cfg.timeout_s,
                        backoff_base_s=cfg.backoff_base_s, backoff_max_s=cfg.backoff_max_s,
                        top_logprobs=cfg.top_logprobs, max_verdict_tokens=cfg.max_verdict_tokens,
                        price_input_per_mtok=cfg.price_input_per_mtok,
                        price_output_per_mtok=cfg.price_output_per_mtok, cache=cfg.cache,
                        cache_dir=cfg.cache_dir or None, chain_of_thought=cfg.chain_of_thought,
                        max_cot_tokens=cfg.max_cot_tokens, pointwise_k=cfg.pointwise_k,
                        min_label_mass=cfg.min_label_mass, extra_body=cfg.extra_body)
    from .local import LocalHFJudge

    return LocalHFJudge(cfg.model, template, device=device, batch_size=cfg.batch_size,
                        max_length=cfg.max_length, pointwise_k=cfg.pointwise_k, min_label_mass=cfg.min_label_mass,
                        autocast=autocast, chain_of_thought=cfg.chain_of_thought,
                        max_cot_tokens=cfg.max_cot_tokens)


def make_panel(cfg: JudgeConfig, device="cpu", autocast=None, key: str = "judge") -> PairwiseJudge:
    import json
    from pathlib import Path

    from .panel import PanelJudge, PanelMember, audit_weights

    members = panel_members(cfg)
    names = [n for n, _, _ in members]
    if cfg.panel_combine == "audit":
        if not cfg.panel_audit:
            raise ConfigError(f"config key '{key}.panel_audit': panel_combine=audit needs the audit.json "
                              "of `rlaif judge-audit` run with this panel")
        path = Path(cfg.panel_audit)
        if not path.is_file():
            raise ConfigError(f"config key '{key}.panel_audit': {path} does not exist")
        try:
            weights = audit_weights(json.loads(path.read_text()), names)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"config key '{key}.panel_audit': {path}: {e}") from None
        if not any(w > 0 for w in weights):
            raise ConfigError(f"config key '{key}.panel_audit': {path}: no member is above chance on the "
                              "gold set, so audit weights give every member 0")
    elif cfg.panel_combine == "weighted":
        weights = [w for _, w, _ in members]
    else:
        weights = [1.0] * len(members)
    return PanelJudge([PanelMember(n, make_judge(m, device, autocast, f"{key}.panel[{i}]"), w)
                       for i, ((n, _, m), w) in enumerate(zip(members, weights))], combine=cfg.panel_combine)


__all__ = ["JudgeConfig", "make_judge", "panel_members", "JudgeCall", "JudgeCallError", "PairVerdict", "PairwiseJudge",
           "judge_pairs_both_orders", "combine_orders", "verdict_stats"]
