"""An OpenAI-compatible chat-completions endpoint as the judge (OpenAI, vLLM, llama.cpp, any hosted API).

Each judgement is one chat completion at temperature 0 on the messages of the YAML template (`render`).
Soft label: the request asks for `logprobs` with `top_logprobs=N`; at the first generated position whose
*emitted* token is a label (the verdict token: "A" in "**A**" or "Answer: A", not the "**" before it, whose
alternatives may merely contain a label), p(label) = Σ exp(logprob) over that position's alternatives that equal
the label after stripping whitespace ("A" and " A" both count), and

    P(first better) = p(label_1) / (p(label_1) + p(label_2)).

When the server returns no logprobs, no position emits a label, or the labels there hold less than
`min_label_mass` of the probability, the completion text goes through a strict verdict
parser: exactly a label, optionally wrapped in whitespace/punctuation or after "Answer:" ("A", " B.",
"**A**", "Answer: B"); anything else is a parse failure (P = 0.5, parse_failed). Pointwise templates: the
expected score over the scale labels found at that position (renormalised), else the parsed label, mapped to
[0, 1]; P(first better) = sigmoid(pointwise_k · (s_first − s_second)), as the local judge does. (With a
digit-splitting tokenizer the token "1" also starts "10"; a server whose tokenizer has "10" as one token is read
exactly.)

Small judges and constrained decoding: a model that does not answer with a bare label (SmolLM2-135M through
llama.cpp opens with "<<<", copying the template's delimiters) can be held to the labels by the server, through
`extra_body` fields sent with the verdict request: llama.cpp's `grammar` (`root ::= "A" | "B"`), vLLM's
`guided_choice`. llama.cpp then emits a label and still reports the unconstrained top alternatives, so the soft
label is read from them as above.

The calls of one `prob_first_better` fan out concurrently (asyncio, at most `concurrency` requests in flight,
`asyncio.run` inside the synchronous method). The client's own retries are off: this module retries 408/409/
429, 5xx, timeouts, connection errors and unreadable bodies with exponential backoff and full jitter
(sleep ~ U(0, min(backoff_max_s, backoff_base_s · 2^attempt)); a Retry-After header wins, capped at
backoff_max_s), at most `max_retries` times. A call that still fails is returned with `JudgeCall.error` set —
never a made-up label. 401/403/404 stop at once with a ConfigError (wrong key, base_url or model).

Every successful completion is appended (flushed, fsynced) to a JSONL cache under `cache_dir`, keyed by
sha256 of (base_url, model, template sha256, the exact messages, the sampling parameters), so a rerun sends
no request and costs nothing (cached calls report cost 0 and `cached=True`). The API key comes from the
environment variable named by `api_key_env` and is kept out of metadata, cache, errors and logs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, redact_mapping
from .base import Generated, JudgeCall, JudgeCallError
from .templates import JudgeTemplate, cot_messages, render, verdict_messages

log = logging.getLogger("rlaif.judges.api")

RETRY_STATUS = frozenset({408, 409, 429})  # plus every status >= 500
FATAL_STATUS = frozenset({401, 403, 404})  # the same for every call: a configuration problem
DUMMY_KEY = "no-key"  # sent when api_key_env is empty (local servers that need no key)
_EDGE = " \t\r\n.,;:!?*_`'\"()[]{}"
_PREFIX = re.compile(r"^(?:final\s+)?(?:answer|verdict|score|rating)\s*[:=\-]?\s*", re.IGNORECASE)


def default_cache_dir() -> Path:
    """$RLAIF_CACHE/judge, else ~/.cache/rlaif/judge."""
    root = os.environ.get("RLAIF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rlaif")
    return Path(root) / "judge"


# ---------------------------------------------------------------------------------------------------------
# reading a response


class ResponseError(ValueError):
    """The body is not a chat completion (garbage, truncated JSON, missing fields): retried like a 5xx."""


@dataclass(frozen=True)
class Completion:
    """What a judge needs from one chat completion (this is what the cache stores)."""

    content: str
    top: list[list[tuple[str, float]]] | None  # per generated position: (token, logprob) alternatives
    prompt_tokens: int
    completion_tokens: int
    tokens: list[str] | None = None  # per generated position: the emitted token (None: not reported)

    def to_json(self) -> dict[str, Any]:
        return {"content": self.content, "top": self.top, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "tokens": self.tokens}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Completion:
        top = [[(str(t), float(lp)) for t, lp in pos] for pos in d["top"]] if d.get("top") else None
        tokens = [str(t) for t in d["tokens"]] if d.get("tokens") else None  # older cache rows have none
        return cls(str(d["content"]), top, int(d["prompt_tokens"]), int(d["completion_tokens"]), tokens)


def _top_logprobs(lp: Any) -> tuple[list[list[tuple[str, float]]] | None, list[str] | None]:
    """(alternatives per position, emitted token per position) from the chat format ({content: [{token,
    logprob, top_logprobs}]}) or the legacy completions format ({tokens: [...], top_logprobs: [{token:
    logprob}]}); None where there are none."""
    if not isinstance(lp, dict):
        return None, None
    out: list[list[tuple[str, float]]] = []
    tokens: list[str] | None = None
    try:
        if isinstance(lp.get("content"), list):
            tokens = []
            for entry in lp["content"]:
                alts = entry.get("top_logprobs") or [{"token": entry["token"], "logprob": entry["logprob"]}]
                out.append([(str(a["token"]), float(a["logprob"])) for a in alts])
                tokens.append(str(entry["token"]))
        elif isinstance(lp.get("top_logprobs"), list):
            out = [[(str(t), float(v)) for t, v in d.items()] for d in lp["top_logprobs"] if isinstance(d, dict)]
            if isinstance(lp.get("tokens"), list) and len(lp["tokens"]) == len(out):
                tokens = [str(t) for t in lp["tokens"]]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, None  # malformed logprobs: the verdict text is still there for the parser
    return (out or None), (tokens or None)


def parse_completion(text: str) -> Completion:
    """A chat-completion body -> Completion; ResponseError for anything else."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ResponseError(f"the body is not JSON ({len(text)} characters)") from None
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        if not isinstance(content, str):
            raise TypeError("message.content is not a string")
        top, emitted = _top_logprobs(choice.get("logprobs"))
        usage = data.get("usage") or {}
        prompt_tokens, completion_tokens = int(usage.get("prompt_tokens") or 0), int(
            usage.get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        raise ResponseError(f"not a chat completion ({type(e).__name__}: {e})") from None
    return Completion(content, top, prompt_tokens, completion_tokens, emitted)


def label_probs(top: list[list[tuple[str, float]]] | None, labels: Sequence[str], min_mass: float = 0.0,
                tokens: Sequence[str] | None = None) -> list[float] | None:
    """p(label) per label at the verdict position: the first position whose emitted token is a label (tokens
    compared after stripping whitespace). `tokens`: the emitted token per position; None (a server or an older
    cache entry that did not report them): the most probable alternative of each position, which is what a
    temperature-0 completion emits. None when no position emits a label or the labels' total there is below
    `min_mass` (the caller falls back to the verdict parser)."""
    for i, position in enumerate(top or []):
        if tokens is not None and i < len(tokens):
            emitted = tokens[i]
        else:
            emitted = max(position, key=lambda alt: alt[1])[0] if position else ""
        if emitted.strip() not in labels:
            continue
        p = [sum(math.exp(lp) for tok, lp in position if tok.strip() == label) for label in labels]
        return p if sum(p) >= min_mass and sum(p) > 0 else None
    return None


def parse_verdict(content: str, labels: Sequence[str]) -> str | None:
    """The label a completion states, strictly: the label alone, optionally wrapped in whitespace and
    punctuation or after "Answer:"/"Verdict:"/"Score:"; None for anything else ("I think A", "A or B")."""
    text = content.strip().strip(_EDGE)
    text = _PREFIX.sub("", text).strip(_EDGE)
    if text in labels:
        return text
    folded = [label for label in labels if label.lower() == text.lower()]
    return folded[0] if len(folded) == 1 else None


# ---------------------------------------------------------------------------------------------------------
# retries


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full jitter: U(0, min(max_s, base_s · 2^attempt)) seconds before retry `attempt` + 1 (attempt from 0)."""
    return rng.uniform(0.0, min(max_s, base_s * 2.0 ** attempt))


def retry_after_s(headers: Any) -> float | None:
    """Seconds a server asks to wait: `retry-after-ms`, or `retry-after` as seconds or an HTTP date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# ---------------------------------------------------------------------------------------------------------
# the on-disk cache


class CompletionCache:
    """Append-only JSONL of {key, completion}: each entry one line, flushed and fsynced as it is made, so a
    killed run keeps what it paid for. A torn last line is ignored (and the next entry starts a new line)."""

    def __init__(self, directory: Path):
        self.path = directory / "api-completions.jsonl"
        self.entries: dict[str, Completion] = {}
        self._torn = False
        if self.path.exists():
            data = self.path.read_bytes()
            self._torn = bool(data) and not data.endswith(b"\n")
            for line in data.decode("utf-8", errors="replace").splitlines():
                try:
                    obj = json.loads(line)
                    self.entries[obj["key"]] = Completion.from_json(obj)
                except (ValueError, KeyError, TypeError):
                    continue  # a torn or foreign line

    def get(self, key: str) -> Completion | None:
        return self.entries.get(key)

    def put(self, key: str, completion: Completion) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, **completion.to_json()}, ensure_ascii=False)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(("\n" if self._torn else "") + line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._torn = False
        self.entries[key] = completion


# ---------------------------------------------------------------------------------------------------------
# the judge


@dataclass(frozen=True)
class _Request:
    messages: tuple[tuple[tuple[str, str], ...], ...]  # hashable messages: ((("role", r), ("content", c)), ...)
    max_tokens: int
    logprobs: bool
    verdict: bool = True  # False: a chain-of-thought rationale (no extra_body constraint on its text)

    @classmethod
    def of(cls, messages: list[dict[str, str]], max_tokens: int, logprobs: bool, verdict: bool = True) -> _Request:
        return cls(tuple(tuple(sorted(m.items())) for m in messages), max_tokens, logprobs, verdict)

    def message_dicts(self) -> list[dict[str, str]]:
        return [dict(m) for m in self.messages]


@dataclass
class _Outcome:
    """One request after its retries (or from the cache)."""

    completion: Completion | None
    error: str | None = None
    cached: bool = False
    cost_usd: float = 0.0
    latency_s: float = 0.0


@dataclass
class _Reading:
    """One judgement (one or two requests with chain of thought) before it becomes a label or a score."""

    completion: Completion | None
    error: str | None
    tokens: int
    cost_usd: float
    latency_s: float
    cached: bool
    rationale: str | None = None


class _Session:
    """Per `prob_first_better`: the async client, the concurrency bound, requests in flight (deduplicated)."""

    def __init__(self, client, concurrency: int):
        self.client, self.semaphore = client, asyncio.Semaphore(concurrency)
        self.inflight: dict[str, asyncio.Task] = {}


def _run_sync(make_coro):
    """asyncio.run, or in a worker thread when an event loop already runs in this thread (notebooks)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


def _public_url(url: str) -> str:
    """The URL without user:password@ (for metadata and cache keys)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class ApiJudge:
    def __init__(self, model: str, template: JudgeTemplate, *, base_url: str = "", api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 6, timeout_s: float = 60.0, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 60.0, top_logprobs: int = 20, max_verdict_tokens: int = 8,
                 price_input_per_mtok: float = 0.0,
                 price_output_per_mtok: float = 0.0, cache: bool = True, cache_dir: str | Path | None = None,
                 chain_of_thought: bool = False, max_cot_tokens: int = 256, pointwise_k: float = 10.0,
                 min_label_mass: float = 0.05, extra_body: dict[str, Any] | None = None,
                 rng: random.Random | None = None):
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ConfigError(f"config key 'judge.api_key_env': the environment variable {api_key_env} that "
                                  "should hold the judge's API key is not set (use api_key_env: '' for a server "
                                  "that needs no key)")
        else:
            key = DUMMY_KEY
        self._api_key = key
        self.model, self.template, self.api_key_env = model, template, api_key_env
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.concurrency, self.max_retries, self.timeout_s = concurrency, max_retries, timeout_s
        self.backoff_base_s, self.backoff_max_s, self.top_logprobs = backoff_base_s, backoff_max_s, top_logprobs
        self.max_verdict_tokens = max_verdict_tokens
        self.price_in, self.price_out = price_input_per_mtok, price_output_per_mtok
        self.chain_of_thought, self.max_cot_tokens = chain_of_thought, max_cot_tokens
        self.pointwise_k, self.min_label_mass = pointwise_k, min_label_mass
        self.extra_body = dict(extra_body or {})
        self.rng = rng or random.Random()
        self.cache = CompletionCache(Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) \
            if cache else None
        self.id = f"api:{model}:{template.mode}" + ("+cot" if chain_of_thought else "")
        self.labels = list(template.labels)
        self.retry_log: list[dict[str, Any]] = []  # every retry: attempt, reason, delay_s (for reports and tests)
        self.counts: dict[str, Any] = dict.fromkeys(
            ("http_requests", "retries", "cache_hits", "errors", "labels_from_logprobs", "labels_from_verdict",
             "parse_failures", "prompt_tokens", "completion_tokens"), 0)
        self.counts["cost_usd"] = 0.0
        self.counts["retry_reasons"] = {}  # e.g. {"HTTP 429": 2, "timeout": 1}
        if template.mode == "pointwise":
            numeric = all(re.fullmatch(r"-?\d+(\.\d+)?", x) for x in self.labels)
            self.values = [float(x) for x in self.labels] if numeric else [float(i + 1) for i in
                                                                           range(len(self.labels))]

    # -- protocol ------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        meta = {"judge": self.id, "backend": "api", "base_url": _public_url(self.base_url), "model": self.model,
                "mode": self.template.mode, "template": self.template.name,
                "template_sha256": self.template.sha256,
                "soft_labels": f"top_logprobs={self.top_logprobs}, else strict verdict parser"
                if self.top_logprobs else "strict verdict parser (logprobs not requested)",
                "max_verdict_tokens": self.max_verdict_tokens, "chain_of_thought": self.chain_of_thought,
                "price_usd_per_mtok": {"input": self.price_in, "output": self.price_out}}
        if self.chain_of_thought:
            meta["max_cot_tokens"] = self.max_cot_tokens
        if self.extra_body:
            meta["extra_body"] = redact_mapping(self.extra_body)
        if self.template.mode == "pointwise":
            meta.update(scale_labels_used=self.labels, pointwise_k=self.pointwise_k)
        return meta

    def stats(self) -> dict[str, Any]:
        """Counts since this judge was built: requests sent, retries (and why), cache hits, failed calls, where
        the labels came from (logprobs | verdict parser), parse failures, billed tokens and cost."""
        return {**self.counts, "cost_usd": round(self.counts["cost_usd"], 6),
                "retry_reasons": dict(self.counts["retry_reasons"])}

    def prob_first_better(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
                          references: Sequence[str | None] | None = None) -> list[JudgeCall]:
        refs = list(references) if references is not None else [None] * len(prompts)
        if self.template.mode == "pairwise":
            convs = [render(self.template, q, first=f, second=s, reference=r)
                     for q, f, s, r in zip(prompts, firsts, seconds, refs)]
            return [self._pairwise_call(r) for r in self._read_all(convs)]
        # pointwise: each answer scored alone (the second order hits the cache or an in-flight request)
        convs = [render(self.template, q, response=a, reference=r)
                 for q, a, r in zip([*prompts, *prompts], [*firsts, *seconds], refs + refs)]
        readings = self._read_all(convs)
        n = len(prompts)
        calls = []
        for f, s in zip(readings[:n], readings[n:]):
            (sf, src_f, fail_f), (ss, src_s, fail_s) = self._score_of(f), self._score_of(s)
            error = f.error or s.error
            prob = 0.5 if error else 1.0 / (1.0 + math.exp(-self.pointwise_k * (sf - ss)))
            calls.append(JudgeCall(prob, f"{self._raw(f)}|{self._raw(s)}", f.tokens + s.tokens,
                                   f.latency_s + s.latency_s, (fail_f or fail_s) and not error, error,
                                   f.cost_usd + s.cost_usd, f.cached and s.cached,
                                   None if error else src_f if src_f == src_s else f"{src_f}|{src_s}"))
        return calls

    def score(self, prompts: Sequence[str], responses: Sequence[str],
              references: Sequence[str | None] | None = None) -> list[float]:
        """Pointwise scores in [0, 1] (pointwise templates only); JudgeCallError when calls fail."""
        if self.template.mode != "pointwise":
            raise ValueError(f"judge {self.id}: score() needs a pointwise template")
        refs = list(references) if references is not None else [None] * len(prompts)
        readings = self._read_all([render(self.template, q, response=a, reference=r)
                                   for q, a, r in zip(prompts, responses, refs)])
        failed = [r.error for r in readings if r.error]
        if failed:
            raise JudgeCallError(f"judge {self.id}: {len(failed)} of {len(readings)} calls failed "
                                 f"(first: {failed[0]})")
        return [self._score_of(r)[0] for r in readings]

    # -- labels from completions ---------------------------------------------------------------------------

    def _pairwise_call(self, r: _Reading) -> JudgeCall:
        base = dict(raw=self._raw(r), tokens=r.tokens, latency_s=r.latency_s, cost_usd=r.cost_usd,
                    cached=r.cached)
        if r.error or r.completion is None:
            return JudgeCall(0.5, error=r.error, **base)
        p = label_probs(r.completion.top, self.labels, self.min_label_mass, r.completion.tokens)
        if p is not None:
            self.counts["labels_from_logprobs"] += 1
            return JudgeCall(p[0] / (p[0] + p[1]), source="logprobs", label_mass=sum(p), **base)
        verdict = parse_verdict(r.completion.content, self.labels)
        self.counts["labels_from_verdict"] += 1
        if verdict is None:
            self.counts["parse_failures"] += 1
            return JudgeCall(0.5, parse_failed=True, source="verdict", **base)
        return JudgeCall(1.0 if verdict == self.labels[0] else 0.0, source="verdict", **base)

    def _score_of(self, r: _Reading) -> tuple[float, str | None, bool]:
        """(score in [0, 1], source, parse_failed); 0.5 for a failed call or a failed parse."""
        if r.error or r.completion is None:
            return 0.5, None, False
        lo, hi = min(self.values), max(self.values)
        p = label_probs(r.completion.top, self.labels, self.min_label_mass, r.completion.tokens)
        if p is not None:
            self.counts["labels_from_logprobs"] += 1
            expected = sum(pi * v for pi, v in zip(p, self.values)) / sum(p)
            return (expected - lo) / (hi - lo), "logprobs", False
        self.counts["labels_from_verdict"] += 1
        verdict = parse_verdict(r.completion.content, self.labels)
        if verdict is None:
            self.counts["parse_failures"] += 1
            return 0.5, "verdict", True
        return (self.values[self.labels.index(verdict)] - lo) / (hi - lo), "verdict", False

    @staticmethod
    def _raw(r: _Reading) -> str | None:
        if r.completion is None:
            return None
        text = r.completion.content.strip()
        return f"{r.rationale}\n=> {text}" if r.rationale is not None else text

    # -- requests ------------------------------------------------------------------------------------------

    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int
                 ) -> list[Generated]:
        """Replies to chat conversations at temperature 0 (cached, retried like verdicts; text None where a call
        failed past its retries, with the error). Also what a critic writes (`rlaif critique`)."""
        if not conversations:
            return []
        import openai

        async def main() -> list[_Outcome]:
            client = openai.AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, max_retries=0,
                                        timeout=self.timeout_s)
            try:
                session = _Session(client, self.concurrency)
                return list(await asyncio.gather(*(
                    self._fetch(session, _Request.of(m, max_new_tokens, False, verdict=False)) for m in conversations)))
            finally:
                await client.close()

        return [Generated(o.completion.content.strip(), o.completion.prompt_tokens + o.completion.completion_tokens,
                          o.latency_s, None, o.cost_usd) if o.completion is not None
                else Generated(None, 0, o.latency_s, o.error or "no completion", o.cost_usd) for o in _run_sync(main)]

    def _read_all(self, conversations: list[list[dict[str, str]]]) -> list[_Reading]:
        if not conversations:
            return []
        import openai

        async def main() -> list[_Reading]:
            client = openai.AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, max_retries=0,
                                        timeout=self.timeout_s)
            try:
                session = _Session(client, self.concurrency)
                return list(await asyncio.gather(*(self._read(session, m) for m in conversations)))
            finally:
                await client.close()

        return _run_sync(main)

    async def _read(self, session: _Session, messages: list[dict[str, str]]) -> _Reading:
        """One judgement: (rationale, then) the verdict request."""
        outcomes, rationale = [], None
        if self.chain_of_thought:
            first = await self._fetch(session, _Request.of(cot_messages(self.template, messages),
                                                           self.max_cot_tokens, False, verdict=False))
            outcomes.append(first)
            if first.completion is None:
                return self._reading(None, outcomes, None)
            rationale = first.completion.content.strip()
            messages = verdict_messages(self.template, messages, rationale)
        verdict = await self._fetch(session, _Request.of(messages, self.max_verdict_tokens,
                                                         self.top_logprobs > 0))
        outcomes.append(verdict)
        return self._reading(verdict.completion, outcomes, rationale)

    @staticmethod
    def _reading(completion: Completion | None, outcomes: list[_Outcome], rationale: str | None) -> _Reading:
        done = [o.completion for o in outcomes if o.completion is not None]
        return _Reading(completion, next((o.error for o in outcomes if o.error), None),
                        sum(c.prompt_tokens + c.completion_tokens for c in done),
                        sum(o.cost_usd for o in outcomes), sum(o.latency_s for o in outcomes),
                        all(o.cached for o in outcomes), rationale)

    def _key(self, req: _Request) -> str:
        ident = {"base_url": _public_url(self.base_url), "model": self.model,
                 "template_sha256": self.template.sha256, "messages": req.message_dicts(),
                 "params": self._params(req)}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def _params(self, req: _Request) -> dict[str, Any]:
        params: dict[str, Any] = {"max_tokens": req.max_tokens, "temperature": 0.0}
        if req.logprobs:
            params.update(logprobs=True, top_logprobs=self.top_logprobs)
        if req.verdict and self.extra_body:  # sent as JSON fields beside the OpenAI ones (openai's extra_body)
            params["extra_body"] = self.extra_body
        return params

    async def _fetch(self, session: _Session, req: _Request) -> _Outcome:
        """From the cache, from an identical request in flight, or over HTTP (then cached)."""
        key = self._key(req)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            self.counts["cache_hits"] += 1
            return _Outcome(hit, cached=True)
        task = session.inflight.get(key)
        if task is not None:  # the same request twice in one batch: sent once
            self.counts["cache_hits"] += 1
            out = await task
            return dataclasses.replace(out, cached=out.completion is not None, cost_usd=0.0)
        task = session.inflight[key] = asyncio.ensure_future(self._request(session, req))
        out = await task
        if out.completion is not None and self.cache is not None:
            self.cache.put(key, out.completion)
        return out

    async def _request(self, session: _Session, req: _Request) -> _Outcome:
        """One request with retries; the outcome carries an error when the retry budget is spent."""
        import openai

        t0 = time.perf_counter()
        reason = kind = "no attempt"
        for attempt in range(self.max_retries + 1):
            wait = None
            async with session.semaphore:
                self.counts["http_requests"] += 1
                try:
                    raw = await session.client.chat.completions.with_raw_response.create(
                        model=self.model, messages=req.message_dicts(), **self._params(req))
                    completion = parse_completion(raw.text)
                except openai.APIStatusError as e:
                    status = e.status_code
                    if status in FATAL_STATUS:
                        raise ConfigError(self._fatal_message(status, e)) from None
                    kind = f"HTTP {status}"
                    reason = f"{kind}: {self._scrub(e.message)[:200]}"
                    if status not in RETRY_STATUS and status < 500:
                        return self._failed(reason, t0)  # e.g. 400: this request is wrong; retrying cannot help
                    wait = retry_after_s(e.response.headers if e.response is not None else None)
                except openai.APITimeoutError:
                    kind = "timeout"
                    reason = f"timeout after {self.timeout_s}s"
                except openai.APIConnectionError as e:
                    kind = "connection error"
                    reason = f"{kind}: {self._scrub(str(e))[:200]}"
                except (ResponseError, openai.APIResponseValidationError) as e:
                    kind = "unreadable response"
                    reason = f"{kind}: {self._scrub(str(e))[:200]}"
                else:
                    cost = (completion.prompt_tokens * self.price_in
                            + completion.completion_tokens * self.price_out) / 1e6
                    self.counts["prompt_tokens"] += completion.prompt_tokens
                    self.counts["completion_tokens"] += completion.completion_tokens
                    self.counts["cost_usd"] += cost
                    return _Outcome(completion, cost_usd=cost, latency_s=time.perf_counter() - t0)
            if attempt == self.max_retries:
                break
            delay = min(wait, self.backoff_max_s) if wait is not None else backoff_delay(
                attempt, self.backoff_base_s, self.backoff_max_s, self.rng)
            self.counts["retries"] += 1
            self.counts["retry_reasons"][kind] = self.counts["retry_reasons"].get(kind, 0) + 1
            self.retry_log.append({"attempt": attempt + 1, "reason": reason, "delay_s": delay})
            log.debug("judge request failed (%s); retry %d in %.2fs", reason, attempt + 1, delay)
            await asyncio.sleep(delay)
        return self._failed(f"{reason} (after {self.max_retries + 1} attempts)", t0)

    def _failed(self, reason: str, t0: float) -> _Outcome:
        self.counts["errors"] += 1
        return _Outcome(None, error=reason, latency_s=time.perf_counter() - t0)

    def _fatal_message(self, status: int, e: Exception) -> str:
        where = f"the judge API at {_public_url(self.base_url)}"
        if status == 404:
            return (f"config key 'judge.model' / 'judge.base_url': {where} answered HTTP 404 for model "
                    f"'{self.model}' (a wrong base_url or model name?)")
        key = f"the key in ${self.api_key_env}" if self.api_key_env else "no key (api_key_env is empty)"
        return f"config key 'judge.api_key_env': {where} refused {key} (HTTP {status})"

    def _scrub(self, text: str) -> str:
        """Error text without the API key (a misbehaving server may echo request headers)."""
        return text.replace(self._api_key, "***") if len(self._api_key) >= 4 else text


__all__ = ["ApiJudge", "Completion", "CompletionCache", "parse_completion", "parse_verdict", "label_probs",
           "backoff_delay", "retry_after_s", "default_cache_dir", "ResponseError"]
