"""The OpenAI-compatible API judge against a real local HTTP server that speaks the chat-completions format and
misbehaves on a script (429 with Retry-After, 500 echoing the request's Authorization header, garbage bodies, a
stall past the client timeout), then answers with top logprobs: soft labels, retries, failures counted and left
for a rerun, the on-disk cache, backoff growth, the strict verdict parser, chain of thought, the key kept out of
every file."""

from __future__ import annotations

import json
import math
import random
import re
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlaif.config import ConfigError, load_config
from rlaif.configs import RootConfig
from rlaif.judges import JudgeConfig, make_judge
from rlaif.judges.api import ApiJudge, backoff_delay, label_probs, parse_completion, parse_verdict
from rlaif.judges.base import JudgeCallError, judge_pairs_both_orders
from rlaif.judges.templates import load_template
from rlaif.stages import label

KEY_ENV = "RLAIF_TEST_JUDGE_KEY"
KEY = "sk-test-3f9c2a7e51d04b8c-never-write-me"
COT_MARK = "explain your reasoning"  # a phrase of the default cot_prompt


def _block(text: str, name: str) -> str | None:
    m = re.search(rf"<<<{name}>>>\n(.*?)\n<<<END {name}>>>", text, re.S)
    return m.group(1) if m else None


class ScriptedServer:
    """POST /v1/chat/completions on 127.0.0.1. `faults` are consumed one per request, in arrival order; after
    them it answers like an OpenAI endpoint. Pairwise: the longer answer wins, its label at p = 0.7 (split over
    "A"/" A"-style tokens), the other at 0.2, "The" at 0.1. Pointwise: "8"/"9" (0.6/0.3) for answers longer than
    20 characters, else "3"/"4". Every request is recorded with its arrival time."""

    def __init__(self, key: str | None = KEY):
        self.key = key
        self.faults: list[str] = []
        self.logprobs = True  # False: ignore the logprobs request (content only)
        self.verdict: Callable[[dict], str] | None = None  # content override for verdict requests
        # a whole completion instead: body -> (content, [(emitted token, [(alternative, p), ...]), ...])
        self.positions: Callable[[dict], tuple[str, list[tuple[str, list[tuple[str, float]]]]]] | None = None
        self.retry_after: dict[str, str] = {"Retry-After": "30"}
        self.stall_s = 2.5  # past the client timeout of the stall test (1 s)
        self.calls: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization", "")
                with server.lock:
                    fault = server.faults.pop(0) if server.faults else None
                    server.calls.append({"t": time.monotonic(), "fault": fault, "body": body, "auth": auth})
                try:
                    server.respond(self, body, auth, fault)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (stall past its timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def send(self, h, status: int, body: bytes, ctype: str = "application/json", headers: dict | None = None):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def respond(self, h, body: dict, auth: str, fault: str | None) -> None:
        if h.path != "/v1/chat/completions":
            return self.send(h, 404, b'{"error": {"message": "no such route"}}')
        if self.key is not None and auth != f"Bearer {self.key}":
            return self.send(h, 401, b'{"error": {"message": "invalid api key"}}')
        if fault == "429":
            return self.send(h, 429, b'{"error": {"message": "rate limited"}}', headers=self.retry_after)
        if fault == "500":  # a careless server that echoes the request's credentials
            msg = {"error": {"message": f"internal error (request had Authorization: {auth})"}}
            return self.send(h, 500, json.dumps(msg).encode())
        if fault == "garbage":
            return self.send(h, 200, b'{"choices": [{"message": {"cont')
        if fault == "html":
            return self.send(h, 200, b"<html><body>502 Bad Gateway</body></html>", ctype="text/html")
        if fault == "nochoices":
            return self.send(h, 200, b'{"object": "chat.completion", "choices": []}')
        if fault == "stall":
            time.sleep(self.stall_s)
        content, top = self.answer(body)
        messages = body["messages"]
        usage = {"prompt_tokens": sum(len(m["content"]) for m in messages) // 4 + 1, "completion_tokens": 1}
        usage["total_tokens"] = usage["prompt_tokens"] + 1
        with self.lock:
            for c in self.calls:
                if c["body"] is body:
                    c["usage"] = usage
        logprobs = None
        if self.positions is not None and COT_MARK not in messages[-1]["content"]:
            content, positions = self.positions(body)
            logprobs = {"content": [{"token": e, "logprob": math.log(dict(alts)[e]), "top_logprobs": [
                {"token": t, "logprob": math.log(p)} for t, p in alts]} for e, alts in positions]}
        elif body.get("logprobs") and self.logprobs and top is not None:
            alts = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in top]
            logprobs = {"content": [{**alts[0], "top_logprobs": alts[:body.get("top_logprobs") or 0]}],
                        "refusal": None}
        resp = {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "logprobs": logprobs, "finish_reason": "stop"}], "usage": usage}
        self.send(h, 200, json.dumps(resp).encode())

    def answer(self, body: dict) -> tuple[str, list[tuple[str, float]] | None]:
        messages = body["messages"]
        if COT_MARK in messages[-1]["content"]:
            return "The longer answer says more, so it is better.", None
        if self.verdict is not None:
            return self.verdict(body), None
        user = next(m["content"] for m in messages if "<<<QUESTION>>>" in m["content"])
        if "<<<ANSWER A>>>" in user:
            a, b = _block(user, "ANSWER A"), _block(user, "ANSWER B")
            win, lose = ("A", "B") if len(a) >= len(b) else ("B", "A")
            return win, [(win, 0.5), (" " + win, 0.2), (lose, 0.2), ("The", 0.1)]
        high = len(_block(user, "ANSWER")) > 20
        s = 8 if high else 3
        return str(s), [(str(s), 0.6), (str(s + 1), 0.3), ("The", 0.1)]

    def requests(self) -> int:
        return len(self.calls)


@pytest.fixture()
def server(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    s = ScriptedServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def make(server: ScriptedServer, tmp_path: Path, template: str = "pairwise", **kw) -> ApiJudge:
    opts = dict(base_url=server.url, api_key_env=KEY_ENV, cache_dir=tmp_path / "judge-cache", timeout_s=5.0,
                backoff_base_s=0.01, backoff_max_s=0.05, concurrency=2)
    opts.update(kw)
    return ApiJudge("judge-model", load_template(template), **opts)


def label_args(out: Path, server: ScriptedServer, model: str, prompts: str, cache: Path, *extra: str) -> list[str]:
    return [f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1", f"label.policy={model}",
            f"label.prompts={prompts}", "label.max_prompts=2", "label.responses_per_prompt=2",
            "label.max_new_tokens=8", "label.judge.backend=api", f"label.judge.base_url={server.url}",
            "label.judge.model=judge-model", f"label.judge.api_key_env={KEY_ENV}", f"label.judge.cache_dir={cache}",
            "label.judge.backoff_base_s=0.01", "label.judge.backoff_max_s=0.05", "label.judge.timeout_s=5",
            "label.judge.concurrency=2", *extra]


def run_label(out: Path, args: list[str]) -> tuple[list[dict], dict]:
    cfg = load_config(RootConfig, None, args)
    label.train(cfg.run, cfg.label)
    path = out / "preferences.jsonl"
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []
    return rows, json.loads((out / "label_summary.json").read_text(encoding="utf-8"))


def assert_key_in_no_file(*folders: Path) -> None:
    files = [p for f in folders for p in f.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert KEY.encode() not in p.read_bytes(), p


# --- soft labels, tokens, cost ------------------------------------------------------------------------------

def test_soft_label_from_top_logprobs_with_tokens_and_cost(server, tmp_path):
    j = make(server, tmp_path, price_input_per_mtok=2.5, price_output_per_mtok=10.0)
    calls = j.prob_first_better(["Q1?", "Q2?"], ["a long first answer", "x"], ["short", "a long second answer"])
    # the longer answer's label: "A" 0.5 + " A" 0.2 = 0.7 against 0.2 -> P(first) = 0.7 / 0.9 or 0.2 / 0.9
    assert [c.prob for c in calls] == pytest.approx([7 / 9, 2 / 9])
    assert all(c.source == "logprobs" and not c.parse_failed and c.error is None and not c.cached for c in calls)
    assert [c.raw for c in calls] == ["A", "B"]
    assert server.requests() == 2 and all(c["auth"] == f"Bearer {KEY}" for c in server.calls)
    sent = server.calls[0]["body"]
    assert sent["logprobs"] is True and sent["top_logprobs"] == 20 and sent["temperature"] == 0
    assert sent["max_tokens"] == 8 and sent["messages"][0]["role"] == "system"
    by_q = {_block(c["body"]["messages"][-1]["content"], "QUESTION"): c["usage"] for c in server.calls}
    for q, c in zip(["Q1?", "Q2?"], calls):
        u = by_q[q]
        assert c.tokens == u["prompt_tokens"] + u["completion_tokens"]
        assert c.cost_usd == pytest.approx((u["prompt_tokens"] * 2.5 + u["completion_tokens"] * 10.0) / 1e6)
    stats = j.stats()
    assert stats["labels_from_logprobs"] == 2 and stats["http_requests"] == 2 and stats["retries"] == 0
    assert stats["cost_usd"] == pytest.approx(sum(c.cost_usd for c in calls), abs=1e-6)
    meta = j.metadata()
    assert meta["backend"] == "api" and meta["template_sha256"] == load_template("pairwise").sha256
    assert KEY not in json.dumps(meta) and meta["base_url"] == server.url
    # the same judgements again: from the cache, no request, no cost
    again = j.prob_first_better(["Q1?", "Q2?"], ["a long first answer", "x"], ["short", "a long second answer"])
    assert server.requests() == 2
    assert [c.prob for c in again] == [c.prob for c in calls]
    assert all(c.cached and c.cost_usd == 0.0 for c in again)


def test_label_probs_and_completion_parsing():
    top = [[("<<<", -0.1), ("A", math.log(0.01))], [("B", math.log(0.3)), (" A", math.log(0.1))]]
    # read where the verdict token is emitted (position 1: "B"), not where an alternative merely holds a label
    assert label_probs(top, ["A", "B"]) == pytest.approx([0.1, 0.3])
    assert label_probs(top, ["A", "B"], tokens=["<<<", "B"]) == pytest.approx([0.1, 0.3])
    assert label_probs(top, ["A", "B"], min_mass=0.5) is None  # too little mass there: not a soft label
    assert label_probs([[("The", -0.1)]], ["A", "B"]) is None and label_probs(None, ["A", "B"]) is None
    # "**A**": position 0 emits "**" (0.97) with B 0.02 / A 0.01 among its alternatives; position 1 emits "A"
    # (0.999). The verdict is A, P(first) ~ 1 -- reading position 0 gave 0.33 and flipped it
    bold = [[("**", math.log(0.97)), ("B", math.log(0.02)), ("A", math.log(0.01))],
            [("A", math.log(0.999)), ("B", math.log(0.0005))], [("**", math.log(0.99))]]
    p = label_probs(bold, ["A", "B"], tokens=["**", "A", "**"])
    assert p[0] / sum(p) == pytest.approx(0.999 / 0.9995)
    # "Answer: A": "Answer" and ":" before the verdict; without emitted tokens the top alternative stands in
    answer = [[("Answer", math.log(0.9)), ("B", math.log(0.04)), ("A", math.log(0.02))], [(":", math.log(0.99))],
              [(" A", math.log(0.95)), (" B", math.log(0.04))]]
    p = label_probs(answer, ["A", "B"])
    assert p == pytest.approx([0.95, 0.04]) and p[0] / sum(p) > 0.95
    # the emitted tokens come back from both response formats
    comp = parse_completion(json.dumps({"choices": [{"message": {"content": "**A**"}, "logprobs": {"content": [
        {"token": t, "logprob": math.log(q), "top_logprobs": [{"token": a, "logprob": lp} for a, lp in alts]}
        for t, q, alts in zip(["**", "A", "**"], [0.97, 0.999, 0.99], bold)]}}]}))
    assert comp.tokens == ["**", "A", "**"]
    p = label_probs(comp.top, ["A", "B"], tokens=comp.tokens)
    assert p[0] > p[1]
    comp = parse_completion(json.dumps({"choices": [{"message": {"content": "B"}, "logprobs": {
        "content": [{"token": "B", "logprob": -0.2, "top_logprobs": []}]}}], "usage": {"prompt_tokens": 5}}))
    assert comp.content == "B" and comp.top == [[("B", -0.2)]] and comp.prompt_tokens == 5
    # the legacy completions format (some servers use it for chat too)
    comp = parse_completion(json.dumps({"choices": [{"message": {"content": "A"}, "logprobs": {
        "tokens": ["A"], "top_logprobs": [{"A": -0.5, "B": -1.5}]}}]}))
    assert comp.top == [[("A", -0.5), ("B", -1.5)]] and comp.completion_tokens == 0
    # malformed logprobs are dropped (the text still goes to the verdict parser), not retried forever
    comp = parse_completion(json.dumps({"choices": [{"message": {"content": "A"}, "logprobs": {
        "content": [{"logprob": "x"}]}}]}))
    assert comp.content == "A" and comp.top is None
    for bad in ('{"choices": [{"mess', "<html></html>", '{"choices": []}', '{"choices": [{"message": {"content": 3}}]}',
                "[1, 2]"):
        with pytest.raises(ValueError):
            parse_completion(bad)


def test_soft_label_read_at_the_verdict_token_with_a_mass_floor(server, tmp_path):
    """The judge writes "**A**": position 0 emits "**" with B 0.02 / A 0.01 among its alternatives, position 1
    emits the verdict. Reading position 0 gave P(first) = 0.33 and flipped the verdict; the label now comes from
    the emitted "A". Below min_label_mass at the verdict position the strict parser decides instead."""
    verdict_p = {"A": 0.999}

    def bold(body):
        return "**A**", [("**", [("**", 0.97), ("B", 0.02), ("A", 0.01)]),
                         ("A", [("A", verdict_p["A"]), ("B", 0.0005)]), ("**", [("**", 0.99)])]

    server.positions = bold
    j = make(server, tmp_path, cache=False)
    call = j.prob_first_better(["Q?"], ["x"], ["y"])[0]
    assert call.source == "logprobs" and call.prob == pytest.approx(0.999 / 0.9995)
    assert call.label_mass == pytest.approx(0.9995)
    verdict_p["A"] = 0.01  # the emitted verdict holds 1 % + 0.05 %: under the 0.05 default floor
    call = make(server, tmp_path, cache=False).prob_first_better(["Q?"], ["x"], ["y"])[0]
    assert call.source == "verdict" and call.prob == 1.0  # "**A**" parsed
    call = make(server, tmp_path, cache=False, min_label_mass=0.001).prob_first_better(["Q?"], ["x"], ["y"])[0]
    assert call.source == "logprobs" and call.prob == pytest.approx(0.01 / 0.0105)


# --- retries ------------------------------------------------------------------------------------------------

def test_label_completes_through_429_500_garbage_and_a_stall(server, tmp_path, tiny_model_dir, prompts_file):
    server.faults = ["429", "500", "garbage", "stall", "html", "nochoices"]
    out, cache = tmp_path / "run", tmp_path / "cache"
    rows, summary = run_label(out, label_args(out, server, tiny_model_dir, prompts_file, cache,
                                              "label.judge.timeout_s=1", "label.judge.max_retries=6"))
    # 2 prompts x 1 pair, both orders: 4 judgements, each retried until it got an answer
    assert len(rows) == 2 and summary["pairs_failed_this_run"] == 0 and summary["pairs_written"] == 2
    calls = summary["judge_calls_this_run"]
    assert calls["retries"] == 6 and calls["http_requests"] == 10 and calls["errors"] == 0
    assert calls["retry_reasons"] == {"HTTP 429": 1, "HTTP 500": 1, "unreadable response": 3, "timeout": 1}
    assert calls["labels_from_logprobs"] == 4
    for r in rows:
        j = r["judge"]
        assert j["label_source_ab"] == j["label_source_ba"] == "logprobs" and j["parse_failures"] == 0
        # the longer answer wins in both orders: 7/9 for it, whichever it is
        assert r["label_prob"] == pytest.approx(7 / 9) or len(r["chosen"]) == len(r["rejected"])
    assert server.requests() == 10
    assert [c["fault"] for c in server.calls[:6]] == ["429", "500", "garbage", "stall", "html", "nochoices"]
    assert_key_in_no_file(out, cache)


def test_failures_past_the_retry_budget_are_counted_and_redone_by_a_rerun(server, tmp_path, tiny_model_dir,
                                                                         prompts_file):
    # K=3: 3 pairs a prompt, 6 judge calls. With one retry and concurrency 1, the first prompt's 12 attempts all
    # meet a 500 (whose body echoes the Authorization header); the second prompt's calls succeed.
    server.faults = ["500"] * 12
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = label_args(out, server, tiny_model_dir, prompts_file, cache, "label.responses_per_prompt=3",
                      "label.judge.max_retries=1", "label.judge.concurrency=1")
    rows, summary = run_label(out, args)
    assert sorted(r["id"] for r in rows) == ["p1:0-1", "p1:0-2", "p1:1-2"]
    assert summary["pairs_failed_this_run"] == 3 and summary["judge_call_failures_this_run"] == 6
    assert summary["pairs_written"] == 3 and summary["judge_calls_this_run"]["errors"] == 6
    assert summary["judge_errors"] and all(e.startswith("HTTP 500") for e in summary["judge_errors"])
    assert "***" in summary["judge_errors"][0]  # the echoed key, scrubbed
    assert_key_in_no_file(out, cache)
    # a rerun against a healthy server judges exactly the missing pairs: 6 requests, every pair once
    n_before = server.requests()
    rows, summary = run_label(out, args)
    assert server.requests() - n_before == 6
    assert summary["pairs_failed_this_run"] == 0 and summary["pairs_judged_this_run"] == 3
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 6 and set(ids) == {f"p{p}:{i}-{j}" for p in (0, 1)
                                                            for i, j in ((0, 1), (0, 2), (1, 2))}
    # the same labels as a run that never failed (answers are seeded per prompt; the judge is deterministic)
    ref = tmp_path / "ref"
    ref_rows, _ = run_label(ref, label_args(ref, server, tiny_model_dir, prompts_file, tmp_path / "cache2",
                                            "label.responses_per_prompt=3"))
    key = lambda rs: {r["id"]: (r["chosen"], r["rejected"], r["label_prob"]) for r in rs}  # noqa: E731
    assert key(rows) == key(ref_rows)
    assert_key_in_no_file(out, cache, ref)


def test_the_cache_makes_a_second_run_send_nothing(server, tmp_path, tiny_model_dir, prompts_file):
    cache = tmp_path / "cache"
    prices = ("label.judge.price_input_per_mtok=3", "label.judge.price_output_per_mtok=15")
    first = tmp_path / "first"
    rows1, s1 = run_label(first, label_args(first, server, tiny_model_dir, prompts_file, cache, *prices))
    n = server.requests()
    assert n == 4 and len(rows1) == 2
    billed = sum(c["usage"]["prompt_tokens"] * 3 + c["usage"]["completion_tokens"] * 15 for c in server.calls) / 1e6
    assert s1["cost_usd"] == pytest.approx(billed, abs=1e-6) and s1["cost_usd_this_run"] == pytest.approx(billed,
                                                                                                          abs=1e-6)
    assert s1["judge_tokens"] == sum(c["usage"]["total_tokens"] for c in server.calls)
    second = tmp_path / "second"  # a fresh output folder, the same cache: nothing sent, nothing paid
    rows2, s2 = run_label(second, label_args(second, server, tiny_model_dir, prompts_file, cache, *prices))
    assert server.requests() == n
    assert s2["cost_usd"] == 0.0 and s2["judge_calls_this_run"]["http_requests"] == 0
    assert s2["judge_calls_this_run"]["cache_hits"] == 4
    strip = lambda rs: [(r["id"], r["chosen"], r["label_prob"]) for r in rs]  # noqa: E731
    assert strip(rows2) == strip(rows1)
    # a different sampling parameter is a different request: not served from the cache
    third = tmp_path / "third"
    run_label(third, label_args(third, server, tiny_model_dir, prompts_file, cache, "label.judge.top_logprobs=5"))
    assert server.requests() == n + 4


def test_backoff_delays_grow_and_retry_after_is_honoured(server, tmp_path):
    base = 0.2

    def draws(seed: int) -> list[float]:
        rng = random.Random(seed)
        return [backoff_delay(k, base, 10.0, rng) for k in range(4)]

    # full jitter draws U(0, base·2^k); pick a seed whose draws at least double each time (a property of the
    # draws, checked here without any clock) so the server-side gaps must come out in increasing order
    seed = next(s for s in range(10_000) if draws(s)[0] >= 0.08 and all(
        b >= 2 * a for a, b in zip(draws(s), draws(s)[1:])))
    server.faults = ["500"] * 4
    j = make(server, tmp_path, backoff_base_s=base, backoff_max_s=10.0, max_retries=4, concurrency=1,
             rng=random.Random(seed), cache=False)
    (call,) = j.prob_first_better(["q"], ["long answer"], ["short"])
    assert call.error is None and call.prob == pytest.approx(7 / 9)
    assert [r["delay_s"] for r in j.retry_log] == draws(seed)
    assert all(r["delay_s"] <= base * 2 ** k for k, r in enumerate(j.retry_log))  # the cap doubles
    t = [c["t"] for c in server.calls]
    gaps = [b - a for a, b in zip(t, t[1:])]
    assert len(gaps) == 4 and gaps == sorted(gaps)  # each wait longer than the one before
    assert all(g >= d for g, d in zip(gaps, draws(seed)))  # no retry before its wait was over
    # Retry-After wins over the jittered backoff, capped at backoff_max_s
    server.faults = ["429"]
    j = make(server, tmp_path, backoff_base_s=0.01, backoff_max_s=0.05, cache=False)
    j.prob_first_better(["q2"], ["a"], ["b"])
    assert len(j.retry_log) == 1 and j.retry_log[0]["reason"].startswith("HTTP 429")
    assert j.retry_log[0]["delay_s"] == 0.05
    server.faults, server.retry_after = ["429"], {"retry-after-ms": "20"}
    j = make(server, tmp_path, backoff_base_s=0.01, backoff_max_s=5.0, cache=False)
    j.prob_first_better(["q3"], ["a"], ["b"])
    assert j.retry_log[0]["delay_s"] == pytest.approx(0.02)


def test_fatal_status_and_missing_key_are_config_errors(server, tmp_path, monkeypatch):
    monkeypatch.setenv("RLAIF_TEST_WRONG_KEY", "sk-wrong-value-1234")
    j = make(server, tmp_path, api_key_env="RLAIF_TEST_WRONG_KEY")
    with pytest.raises(ConfigError, match=r"RLAIF_TEST_WRONG_KEY.*HTTP 401") as e:
        j.prob_first_better(["q"], ["a"], ["b"])
    assert "sk-wrong-value-1234" not in str(e.value)
    monkeypatch.delenv("RLAIF_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="RLAIF_TEST_UNSET_KEY"):
        make_judge(JudgeConfig(backend="api", model="m", base_url=server.url, api_key_env="RLAIF_TEST_UNSET_KEY"))
    # no key needed (a local server): api_key_env ''
    open_server = ScriptedServer(key=None)
    open_server.thread.start()
    try:
        j = make_judge(JudgeConfig(backend="api", model="m", base_url=open_server.url, api_key_env="",
                                   cache_dir=str(tmp_path / "c2")))
        assert isinstance(j, ApiJudge) and j.id == "api:m:pairwise"
        assert judge_pairs_both_orders(j, ["q"], ["longer answer"], ["short"])[0].label_prob == pytest.approx(7 / 9)
    finally:
        open_server.httpd.shutdown()
        open_server.httpd.server_close()


def test_calls_failing_past_retries_raise_where_labels_cannot_be_left_out(server, tmp_path):
    server.faults = ["500"] * 6  # 2 attempts of the first call, then 2 of each order of the pair
    j = make(server, tmp_path, max_retries=1, concurrency=1)
    calls = j.prob_first_better(["q"], ["a"], ["b"])
    assert calls[0].error.startswith("HTTP 500") and "(after 2 attempts)" in calls[0].error
    assert KEY not in calls[0].error and calls[0].prob == 0.5
    with pytest.raises(JudgeCallError, match="2 of 2 calls failed"):  # the default for audits and rewards
        judge_pairs_both_orders(j, ["q"], ["a"], ["b"])
    kept = judge_pairs_both_orders(j, ["q"], ["a"], ["b"], on_error="keep")[0]  # the next 2 attempts succeed
    assert kept.errors == 0 and kept.cached_calls == 0


# --- no logprobs: the strict verdict parser ------------------------------------------------------------------

@pytest.mark.parametrize("content, expected", [
    ("A", "A"), (" B\n", "B"), ("A.", "A"), ("**B**", "B"), ("Answer: A", "A"), ("answer - B", "B"),
    ("Verdict: A.", "A"), ("a", "A"), ("I think A", None), ("A or B", None), ("AB", None), ("", None),
    ("The answer is A", None), ("Answer", None), ("C", None),
])
def test_parse_verdict_is_strict(content, expected):
    assert parse_verdict(content, ["A", "B"]) == expected


def test_no_logprobs_server_uses_the_strict_parser(server, tmp_path, tiny_model_dir, prompts_file):
    verdicts = {"q1": "A", "q2": "Answer: B", "q3": "**A**.", "q4": "I think A", "q5": "garbage"}
    server.logprobs = False
    server.verdict = lambda body: verdicts[_block(body["messages"][-1]["content"], "QUESTION")]
    j = make(server, tmp_path)
    calls = j.prob_first_better(list(verdicts), ["x"] * 5, ["y"] * 5)
    assert [c.prob for c in calls] == [1.0, 0.0, 1.0, 0.5, 0.5]
    assert [c.parse_failed for c in calls] == [False, False, False, True, True]
    assert all(c.source == "verdict" for c in calls)
    assert j.stats()["labels_from_verdict"] == 5 and j.stats()["parse_failures"] == 2
    # through `rlaif label`: a garbage verdict is a parse failure (a tie), counted in the summary
    server.verdict = lambda body: "The first one, probably."
    out = tmp_path / "run"
    rows, summary = run_label(out, label_args(out, server, tiny_model_dir, prompts_file, tmp_path / "cache"))
    assert summary["parse_failures"] == 4 and summary["pairs_failed_this_run"] == 0
    assert all(r["label_prob"] == 0.5 and r["judge"]["label_source_ab"] == "verdict" for r in rows)


# --- pointwise, chain of thought ----------------------------------------------------------------------------

def test_pointwise_expected_score_from_logprobs(server, tmp_path):
    j = make(server, tmp_path, template="pointwise", pointwise_k=10.0)
    scores = j.score(["q", "q"], ["a rather long and complete answer", "short"])
    # "8" 0.6, "9" 0.3 -> E = (4.8 + 2.7) / 0.9; "3" 0.6, "4" 0.3 -> E = (1.8 + 1.2) / 0.9; mapped (E − 1) / 9
    hi, lo = ((4.8 + 2.7) / 0.9 - 1) / 9, ((1.8 + 1.2) / 0.9 - 1) / 9
    assert scores == pytest.approx([hi, lo])
    n = server.requests()
    v = judge_pairs_both_orders(j, ["q"], ["a rather long and complete answer"], ["short"])[0]
    assert server.requests() == n  # both orders of a pointwise judge reuse the cached scores
    assert v.p_ab == pytest.approx(1 / (1 + math.exp(-10 * (hi - lo)))) and v.consistent
    assert j.metadata()["scale_labels_used"] == [str(i) for i in range(1, 11)]


def test_chain_of_thought_asks_for_a_rationale_then_the_label(server, tmp_path):
    j = make(server, tmp_path, chain_of_thought=True, max_cot_tokens=64)
    (call,) = j.prob_first_better(["q"], ["the longer answer"], ["short"])
    assert server.requests() == 2
    first, second = (c["body"] for c in server.calls)
    assert first["max_tokens"] == 64 and "logprobs" not in first and COT_MARK in first["messages"][-1]["content"]
    assert [m["role"] for m in second["messages"][-3:]] == ["user", "assistant", "user"]
    assert second["messages"][-2]["content"] == "The longer answer says more, so it is better."
    assert second["messages"][-1]["content"] == "Now reply with only your verdict: one of A, B."
    assert second["logprobs"] is True
    assert call.prob == pytest.approx(7 / 9) and call.source == "logprobs"
    assert call.raw == "The longer answer says more, so it is better.\n=> A"
    assert call.tokens == sum(c["usage"]["total_tokens"] for c in server.calls)
    assert j.id.endswith("+cot") and j.metadata()["chain_of_thought"] is True


def test_extra_body_goes_with_the_verdict_request_only_and_keys_the_cache(server, tmp_path):
    """judge.extra_body (e.g. llama.cpp's grammar) is sent as JSON fields of the verdict request, not of the
    rationale request; it is part of the cache key, and secret-looking values are redacted in the metadata."""
    extra = {"grammar": 'root ::= "A" | "B"', "api_token": "tok-should-not-show"}
    j = make(server, tmp_path, chain_of_thought=True, max_cot_tokens=16, extra_body=extra)
    j.prob_first_better(["q"], ["the longer answer"], ["short"])
    rationale, verdict = (c["body"] for c in server.calls)
    assert "grammar" not in rationale and verdict["grammar"] == extra["grammar"] and verdict["api_token"]
    assert j.metadata()["extra_body"] == {"grammar": extra["grammar"], "api_token": "***"}
    # another extra_body is another request: not answered from the cache of the first
    other = make(server, tmp_path, chain_of_thought=True, max_cot_tokens=16, extra_body={"grammar": "root ::= \"B\""})
    other.prob_first_better(["q"], ["the longer answer"], ["short"])
    assert server.requests() == 3 and server.calls[-1]["body"]["grammar"] == 'root ::= "B"'  # rationale cached
    # from the command line: a mapping key, set as a whole or field by field; not a mapping -> the key is named
    cfg = load_config(RootConfig, None, ["label.judge.extra_body.grammar=root ::= \"A\" | \"B\"",
                                         "label.judge.extra_body.n_probs=3"])
    assert cfg.label.judge.extra_body == {"grammar": 'root ::= "A" | "B"', "n_probs": 3}
    with pytest.raises(ConfigError, match="label.judge.extra_body"):
        load_config(RootConfig, None, ["label.judge.extra_body=[1, 2]"])


def test_local_judge_chain_of_thought(tiny_model_dir):
    # a random tiny model spreads its mass over the whole vocabulary: no floor on the labels' share
    floor = {"min_label_mass": 0.0}
    plain = make_judge(JudgeConfig(backend="local", model=tiny_model_dir, batch_size=2, **floor))
    cot = make_judge(JudgeConfig(backend="local", model=tiny_model_dir, batch_size=2, chain_of_thought=True,
                                 max_cot_tokens=4, **floor))
    args = (["q1", "q2"], ["a", "b"], ["x", "y"])
    p, c = plain.prob_first_better(*args), cot.prob_first_better(*args)
    assert all(0.0 < x.prob < 1.0 and not x.parse_failed for x in c)
    assert all("\n=> " in x.raw for x in c)
    # the verdict is read after the rationale turn and a verdict request: a longer input than without
    assert all(xc.tokens > xp.tokens for xc, xp in zip(c, p))
    assert [xc.prob for xc in c] != pytest.approx([xp.prob for xp in p])
    assert cot.metadata()["chain_of_thought"] is True and cot.id.endswith("+cot")


# --- config -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("label.judge.concurrency=0", "concurrency"), ("label.judge.max_retries=-1", "max_retries"),
    ("label.judge.top_logprobs=21", "top_logprobs"), ("label.judge.timeout_s=0", "timeout_s"),
    ("label.judge.backoff_max_s=0.001", "backoff_max_s"), ("label.judge.base_url=ftp://x", "base_url"),
    ("label.judge.price_input_per_mtok=-1", "price_input_per_mtok"), ("label.judge.max_cot_tokens=0",
                                                                        "max_cot_tokens"),
])
def test_api_config_validation_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(RootConfig, None, ["label.judge.backend=api", override])
