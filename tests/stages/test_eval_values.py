"""`rlaif eval` against hand-computed figures: a table judge, canned answers, two tiny models for the KL.

The answers are fixed (no sampling), so every figure of eval.json can be worked out by hand: the win-rate with
ties as ½, the prompt-clustered bootstrap interval, the sampled KL (its sign and its row alignment), lengths,
EOS rates and the monitors' inputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.prompts import PromptRow
from rlaif.models.loading import load_causal_lm, load_tokenizer
from rlaif.rollout.generate import Rollout, encode_prompts
from rlaif.stages import evaluate

TABLES = Path(__file__).resolve().with_name("eval_tables.py")
T = 0.7


def canned(tok, rows: list[PromptRow], answers: list[str], ended: list[bool]) -> Rollout:
    """A Rollout of fixed answers: right-padded response ids (+ EOS where `ended`)."""
    enc = encode_prompts(tok, rows, 512)
    seqs = [tok(a, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if e else [])
            for a, e in zip(answers, ended)]
    r = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), r), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), r), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = True
    return Rollout(enc.ids, enc.mask, ids, mask, torch.tensor(ended), [x.text for x in rows], list(answers))


def hand_kl(model, ref, tok, row: PromptRow, answer: str, ended: bool) -> float:
    """Σ_t log π(y_t) − log π_ref(y_t) over the answer's tokens, from one unpadded forward pass per model."""
    from rlaif.rollout.generate import chat_prompt_ids

    p = chat_prompt_ids(tok, row)
    y = tok(answer, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if ended else [])
    ids = torch.tensor([p + y])
    total = 0.0
    with torch.no_grad():
        for m, sign in ((model, 1.0), (ref, -1.0)):
            logp = torch.log_softmax(m(input_ids=ids).logits[0].float() / T, -1)
            total += sign * sum(float(logp[len(p) - 1 + t, y[t]]) for t in range(len(y)))
    return total


def test_eval_figures_equal_hand_computed_values(tmp_path, tiny_model_dir, eos_model_dir, monkeypatch):
    # 2 prompts x 4 answers each. Prompt a: the policy wins all 4 ("good" vs "bad": P = 0.9 both orders).
    # Prompt b: 1 loss ("bad" vs "good"), 1 tie ("fine" vs "fine"), 2 pairs judged with a position bias:
    # ("long answer here" vs "short") -> ½(0.8 + 1 - 0.3) = 0.75: a win; the last one reversed: a loss.
    prompts = [PromptRow("a", (("user", "Question A?"),)), PromptRow("b", (("user", "Question B?"),))]
    rows = [prompts[0]] * 4 + [prompts[1]] * 4
    pol = ["good"] * 4 + ["bad", "fine", "long answer here", "short"]
    base = ["bad"] * 3 + ["bad bad bad", "good", "fine", "short", "long answer here"]
    pol_end = [True, True, False, True, True, True, True, False]
    base_end = [True] * 8
    texts = {"policy": (pol, pol_end), "baseline": (base, base_end)}

    def fake_answer(model_arg, rs, cfg, seed, device, amp, desc, progress):
        name = "policy" if model_arg == str(tiny_model_dir) else "baseline"
        tok = load_tokenizer(model_arg, padding_side="left")
        answers, ended = texts[name]
        assert [r.id for r in rs] == [r.id for r in rows]  # samples_per_prompt copies, in prompt order
        return (evaluate.SystemAnswers(model_arg, canned(tok, rs, answers, ended)),
                load_causal_lm(model_arg).eval(), tok)

    monkeypatch.setattr(evaluate, "answer", fake_answer)
    monkeypatch.setattr(evaluate, "load_prompts", lambda arg: prompts)

    class LengthRM:  # the reward model: the answer's length in characters
        def __init__(self, *a, **k):
            pass

        def __call__(self, qs, answers, rows=None):
            return torch.tensor([float(len(a)) for a in answers])

    monkeypatch.setattr(evaluate, "ModelReward", LengthRM)
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={tmp_path}", "run.progress=false", "run.seed=0", f"eval.policy={tiny_model_dir}",
        f"eval.baseline={eos_model_dir}", "eval.samples_per_prompt=4", f"eval.temperature={T}",
        "eval.judge.backend=function", f"eval.judge.function={TABLES}:table_judge", "eval.reward_models=[rm]",
        "eval.bootstrap_samples=4000"])
    r = evaluate.evaluate(cfg.run, cfg.eval)

    # win-rate: prompt a 4 wins; prompt b loss, tie, win, loss -> (4 + 0 + ½ + 1 + 0) / 8 = 0.6875
    assert (r["wins"], r["ties"], r["losses"]) == (5, 1, 2)
    assert r["win_rate"] == pytest.approx(5.5 / 8)
    # clustered by prompt: per-prompt means [1.0, 0.375]; a resample of the 2 prompts is both a (1/4): 1.0,
    # both b (1/4): 0.375, or one each (1/2): 0.6875 -> the 2.5 % / 97.5 % percentiles are 0.375 and 1.0.
    # (Resampling the 8 answers instead would give an interval strictly inside that.)
    assert r["win_rate_ci"] == pytest.approx([0.375, 1.0])
    # the judge saw both orders: ("long answer here", "short") was 0.8 first and 0.3 reversed -> inconsistent
    assert r["judge_stats"]["pairs"] == 8
    samples = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["prob_policy_better"] for s in samples] == pytest.approx(
        [0.9] * 4 + [0.1, 0.5, 0.75, 0.25])
    # KL: the policy's own answers under policy and reference (= the baseline model), per row and in order
    pm, bm = load_causal_lm(str(tiny_model_dir)).eval(), load_causal_lm(str(eos_model_dir)).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    kl = [hand_kl(pm, bm, tok, row, a, e) for row, a, e in zip(rows, pol, pol_end)]
    assert [s["kl_policy"] for s in samples] == pytest.approx(kl, abs=2e-4)
    assert r["policy_stats"]["kl_mean"] == pytest.approx(sum(kl) / 8, abs=1e-4)
    assert r["baseline_stats"]["kl_mean"] == 0.0  # the baseline is the reference
    # lengths in tokens (EOS counted where it ended), EOS rates, reward = characters
    lens = [len(tok(a, add_special_tokens=False)["input_ids"]) + int(e) for a, e in zip(pol, pol_end)]
    assert r["policy_stats"]["length_mean"] == pytest.approx(sum(lens) / 8)
    assert r["policy_stats"]["eos_rate"] == pytest.approx(6 / 8) and r["baseline_stats"]["eos_rate"] == 1.0
    rp, rb = [float(len(a)) for a in pol], [float(len(a)) for a in base]
    assert r["policy_stats"]["reward_mean"] == pytest.approx(sum(rp) / 8)
    mons = {m["name"]: m for m in r["monitors"]}
    # reward-length correlation over the policy's answers: Pearson(characters, tokens)
    assert mons["reward_length_correlation"]["value"] == pytest.approx(
        float(torch.corrcoef(torch.tensor([rp, [float(x) for x in lens]]))[0, 1]), abs=1e-6)
    # RM vs judge disagreement, over pairs where both have a side: RM margins (characters) rp - rb =
    # [1, 1, 1, -7, -1, 0, 11, -11]; judge margins p - ½ = [.4, .4, .4, .4, -.4, 0, .25, -.25]. The tie (row 6,
    # both 0) has no side; of the other 7 only row 4 ("good" judged better, 4 < 11 characters) disagrees: 1/7
    assert [p - b for p, b in zip(rp, rb)] == [1, 1, 1, -7, -1, 0, 11, -11]
    assert mons["rm_judge_disagreement"]["value"] == pytest.approx(1 / 7)
    assert math.isfinite(mons["kl_to_reference"]["value"])
    assert mons["kl_to_reference"]["value"] == pytest.approx(sum(kl) / 8, abs=1e-4)
