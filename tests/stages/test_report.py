"""The run report: a run folder written with the stages' own writers (MetricsLogger, save_json, label's
summarise, a real judge audit) renders to one self-contained page with every figure and plot; missing stages
show "not run"; untrusted answers are escaped; `rlaif report`; and a real headless Chromium renders the page
(the plots are in the DOM, the screenshot is not blank, an injected <script> did not run)."""

from __future__ import annotations

import json
import math
import random
import re
import struct
import zlib
from html import unescape
from pathlib import Path

import pytest
from browser import chromium, headless

from rlaif.checkpoint import save_json
from rlaif.cli import main as cli_main
from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.jsonl import append_jsonl
from rlaif.data.prompts import PromptRow
from rlaif.judges.base import PairVerdict, combine_orders
from rlaif.metrics import MetricsLogger
from rlaif.ops import cosine_with_floor_lr, linear_with_floor_lr
from rlaif.report import write_report
from rlaif.report.svg import Series, format_tick, line_plot, nice_ticks
from rlaif.stages.audit import run_audit
from rlaif.stages.label import preference_row, summarise

SFT_STEPS, RM_STEPS, PPO_ITERS, N_SAMPLES = 30, 20, 24, 12
INJECTED = "<script>document.title='PWNED'</script><img src=x onerror=\"document.title='PWNED2'\">"
REWARD_PLOT = "PPO reward-model score (training batch)"  # the raw RM score, and after the EOS rule

FIRST_BIASED_JUDGE = '''
import json
from importlib import resources

GOLD = [json.loads(x) for x in (resources.files("rlaif") / "assets" / "judge" / "gold.jsonl").read_text().splitlines()]
BETTER = {g["better"] for g in GOLD}


def mostly_right_first_biased(prompts, firsts, seconds):
    """Right on most pairs, with a pull towards the first answer."""
    return [0.9 if f in BETTER else 0.55 if len(f) % 3 else 0.2 for f in firsts]
'''


def build_run(root: Path) -> dict:
    """A pipeline run folder with every stage's files, written by the stages' own writers. Returns the eval."""
    rng = random.Random(0)
    # sft: the held-out loss before training (step 0), then train steps, held-out loss every 10 steps
    (root / "sft").mkdir(parents=True)
    sft = MetricsLogger(root / "sft", step_key="step")
    sft.log(0, {"eval_loss": 2.9, "eval_ppl": math.exp(2.9), "eval_tokens": 812})
    for step in range(SFT_STEPS):
        loss = 1.4 + 1.5 * math.exp(-step / 8) + rng.uniform(-0.08, 0.08)
        row = {"loss": loss, "grad_norm": 3.0 * math.exp(-step / 15) + rng.uniform(0, 0.3), "tokens": 900,
               "lr": cosine_with_floor_lr(step, SFT_STEPS, 9e-6, 0.3, 2), "epoch": (step + 1) / 10, "rows": 32,
               "prompts_truncated": 0, "completions_truncated": 0, "tokens_per_s": 410 + rng.uniform(-20, 20),
               "s_step": 2.2}
        if (step + 1) % 10 == 0:
            ev = 1.6 + 1.2 * math.exp(-step / 8)
            row.update({"eval_loss": ev, "eval_ppl": math.exp(ev), "eval_tokens": 812})
        sft.log(step + 1, row)
    # judge audit: a real audit of a function judge on the shipped gold set
    judge_py = root.parent / "report_judges.py"
    judge_py.write_text(FIRST_BIASED_JUDGE, encoding="utf-8")
    cfg = load_config(RootConfig, None, [f"run.output_dir={root / 'audit'}", "judge_audit.judge.backend=function",
                                         f"judge_audit.judge.function={judge_py}:mostly_right_first_biased"])
    run_audit(cfg.run, cfg.judge_audit)
    # label: preference rows and their summary, through label's own functions
    (root / "label").mkdir()
    rows = []
    for i in range(16):
        p_ab, p_ba = rng.choice([0.9, 0.7, 0.6, 0.5]), rng.choice([0.1, 0.3, 0.6, 0.5])
        label_prob, consistent, first_ab, first_ba = combine_orders(p_ab, p_ba)
        v = PairVerdict(label_prob, p_ab, p_ba, consistent, first_ab, first_ba, tokens=0, latency_s=0.01,
                        parse_failures=0)
        row = preference_row(PromptRow(f"q{i}", (("user", f"Question {i}?"),), f"Reference {i}."), 0, 1, f"answer A{i}",
                             f"answer B{i}", v, {"judge": "embedding:minilm-l6", "backend": "embedding"})
        append_jsonl(root / "label" / "preferences.jsonl", row)
        rows.append(row)
    save_json(root / "label" / "label_summary.json",
              summarise(rows, [], {"pairs_judged_this_run": 16, "wall_time_this_run_s": 1.5,
                                   "judge": {"judge": "embedding:minilm-l6", "backend": "embedding"}}))
    # rm: metrics rows as rm.train logs them, and its summary.json
    (root / "rm").mkdir()
    rm = MetricsLogger(root / "rm", step_key="step")
    rm.log(0, {"eval_loss": 0.69, "eval_accuracy": 0.5, "eval_margin_mean": 0.0, "eval_reward_std": 0.01,
               "eval_pairs": 8})
    for step in range(RM_STEPS):
        acc = min(1.0, 0.5 + step * 0.02 + rng.uniform(-0.05, 0.05))
        row = {"loss": 0.69 - 0.012 * step, "bt_loss": 0.69 - 0.012 * step, "center_penalty": 0.0, "accuracy": acc,
               "margin_mean": 0.05 * step, "reward_mean": 0.1, "reward_std": 0.2 + 0.01 * step, "grad_norm": 1.0,
               "pairs": 8, "lr": linear_with_floor_lr(step, RM_STEPS, 1e-5, 0.1), "epoch": step / 2,
               "pairs_per_s": 30.0, "s_step": 0.3}
        if (step + 1) % 5 == 0:
            row.update({"eval_loss": 0.66 - 0.01 * step, "eval_accuracy": 0.55 + 0.01 * step,
                        "eval_margin_mean": 0.04 * step, "eval_reward_std": 0.3, "eval_pairs": 8})
        rm.log(step + 1, row)
    save_json(root / "rm" / "summary.json", {
        "model": "minilm-l6", "input_format": "pair", "steps": RM_STEPS, "train_pairs": 144, "eval_pairs": 16,
        "rlaif_reward_bias": 0.12, "train_chosen_reward_std": 0.4,
        "eval": {"loss": 0.49, "accuracy": 0.8125, "margin_mean": 0.7, "reward_mean": 0.0, "reward_std": 0.5,
                 "chosen_mean": 0.3, "rejected_mean": -0.3, "pairs": 16}})
    # ppo: per-iteration rows as ppo.train logs them; iteration 7 had no valid rollout (NaN score, no update)
    (root / "ppo").mkdir()
    ppo = MetricsLogger(root / "ppo")
    for it in range(PPO_ITERS):
        score = -0.6 + 0.04 * it + rng.uniform(-0.1, 0.1)
        row = {"reward_mean": score + 0.05, "reward_std": 0.4, "score_mean": float("nan") if it == 6 else score,
               "kl": 0.02 * it + rng.uniform(0, 0.01), "kl_coef": 0.05, "non_score_reward": -0.001 * it,
               "response_length": 30 + 0.5 * it, "eos_rate": min(1.0, 0.6 + 0.015 * it), "valid_rows": 8,
               "value_mean": 0.1, "return_mean": score, "prompts_truncated": 0, "tokens": 250,
               "tokens_per_s": 14.0, "s_generate": 6.1, "s_score": 2.0, "s_update": 7.5, "s_iteration": 15.6}
        if it != 6:
            row.update({"value_loss": 0.3 / (1 + it), "value_grad_norm": 0.5, "vf_clipfrac": 0.05,
                        "policy_loss": -0.01, "policy_grad_norm": 0.8, "ratio_max": 1.2,
                        "clipfrac": 0.02 + 0.002 * it, "approx_kl": 0.001 * it, "entropy": 2.1 - 0.02 * it})
        ppo.log(it + 1, row)
    # eval: eval.json as `rlaif eval` writes it, and one samples row per held-out prompt
    (root / "eval").mkdir()
    samples = []
    for i in range(N_SAMPLES):
        answer = INJECTED if i == 3 else f"Policy answer {i}: line one.\nline two & more"
        samples.append({"id": f"h{i}", "prompt": f"Held-out question {i}?", "reference": f"Reference {i}.",
                        "baseline": f"Baseline answer {i}", "policy": answer,
                        "prob_policy_better": [0.9, 0.7, 0.5, 0.2][i % 4],
                        "reward_baseline": -0.5 + 0.1 * i, "reward_policy": -0.2 + 0.1 * i, "kl_policy": 1.0})
        append_jsonl(root / "eval" / "samples.jsonl", samples[-1])
    ev = {"policy": str(root / "ppo" / "policy"), "baseline": str(root / "sft" / "model"),
          "judge": {"judge": "embedding:minilm-l6", "backend": "embedding", "offline_stand_in": True,
                    "note": "similarity to the reference answer"},
          "prompts": N_SAMPLES, "win_rate": 0.625, "win_rate_ci": [0.51, 0.74], "wins": 6, "losses": 3, "ties": 3,
          "bootstrap_samples": 2000,
          "policy_stats": {"reward_mean": 0.35, "kl_mean": 1.234, "length_mean": 33.5, "distinct_2": 0.81,
                           "eos_rate": 0.97},
          "baseline_stats": {"reward_mean": 0.05, "kl_mean": 0.0, "length_mean": 31.0, "distinct_2": 0.78,
                             "eos_rate": 0.9},
          "monitors": [
              {"name": "reward_length_correlation", "value": 0.71, "threshold": 0.5, "warning": True,
               "about": "Pearson correlation of reward with answer length"},
              {"name": "rm_judge_disagreement", "value": 0.2, "threshold": 0.35, "warning": False,
               "about": "share of pairs where the reward model and the judge disagree"}],
          "warnings": ["reward_length_correlation = 0.710 > 0.5: Pearson correlation of reward with answer length"]}
    save_json(root / "eval" / "eval.json", ev)
    save_json(root / "timings.json", {"sft": 65.2, "audit": 3.1, "label": 140.0, "rm": 30.5, "ppo": 420.0,
                                      "eval": 88.0})
    return ev


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report") / "run"
    build_run(root)
    return root


def svgs(page: str) -> dict[str, str]:
    """aria-label (the plot title) -> the SVG markup."""
    return {unescape(m.group(1)): m.group(0) for m in re.finditer(r'<svg class="plot[^"]*"[^>]*aria-label="([^"]*)".*?</svg>',
                                                                  page, re.S)}


def polyline_points(svg_text: str) -> int:
    return sum(len(p.split()) for p in re.findall(r'<polyline[^>]*points="([^"]*)"', svg_text))


# ---------------------------------------------------------------------------------------------------------
# plots


def test_nice_ticks_by_hand():
    # span 1 / 5 = 0.2 -> step 0.2: 0, 0.2, ..., 1
    assert [round(t, 9) for t in nice_ticks(0.0, 1.0)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    # span 7.5 / 4 = 1.875 -> step 2 from floor(0.3 / 2) * 2 = 0 to 8
    assert nice_ticks(0.3, 7.8, 4) == [0.0, 2.0, 4.0, 6.0, 8.0]
    # integer x: span 23 / 5 = 4.6 -> step 5, from 0 to 25
    assert nice_ticks(1, 24, 5, integer=True) == [0, 5, 10, 15, 20, 25]
    # a constant series opens a +-10 % window: [0.9, 1.1], span 0.2 / 5 = 0.04 -> step 0.05
    ticks = nice_ticks(1.0, 1.0)
    assert ticks[0] <= 0.9 and ticks[-1] >= 1.1 and len(ticks) <= 7
    assert [format_tick(t, [0.0, 0.25, 0.5]) for t in (0.0, 0.25, 0.5)] == ["0.00", "0.25", "0.50"]
    assert format_tick(-0.0, [0.0, 1.0]) == "0"


def test_line_plot_breaks_at_nan_and_skips_empty():
    svg = line_plot("t", [Series("a", [1, 2, 3, 4, 5], [1.0, 2.0, None, 4.0, 5.0])])
    lines = re.findall(r'points="([^"]*)"', svg)
    assert [len(p.split()) for p in lines] == [2, 2]  # one gap, two runs
    assert svg.count("<circle") == 4 and "<title>t</title>" in svg
    assert line_plot("empty", [Series("a", [1, 2], [None, None])]) == ""


# ---------------------------------------------------------------------------------------------------------
# the page


def test_report_has_every_figure_and_plot(run_dir, tmp_path):
    out = write_report(run_dir, tmp_path / "out")
    page = out.read_text(encoding="utf-8")
    plots = svgs(page)
    for title in ("SFT loss", "RM pairwise accuracy", "RM loss", REWARD_PLOT, "PPO KL to reference", "PPO entropy",
                  "PPO response length", "PPO clip fraction", "PPO EOS rate", "Judge audit on the gold set",
                  "Label confidence: P(chosen better)", "Reward per held-out prompt"):
        assert title in plots, title
    # every logged point is drawn: 30 train losses + 4 held-out losses (step 0, 10, 20, 30)
    assert polyline_points(plots["SFT loss"]) == SFT_STEPS + 4
    assert polyline_points(plots["PPO EOS rate"]) == PPO_ITERS
    assert polyline_points(plots["PPO entropy"]) == PPO_ITERS - 1  # not logged in the iteration without update
    reward = plots[REWARD_PLOT]  # the NaN score of iteration 7 splits the score line in two
    assert len(re.findall(r"<polyline", reward)) == 3 and polyline_points(reward) == 2 * PPO_ITERS - 1
    # no external resource and no script: everything inline
    assert not re.search(r"<script|<link|src=\"http|href=\"http|@import|url\(", page.replace(
        "&lt;script&gt;", ""))
    # headline: win-rate and its interval, rewards, KL, the monitor warning in the warnings box
    head = page[page.index('id="headline"'):page.index('id="sft"')]
    assert "62.5 %" in head and "51.0 %" in head and "74.0 %" in head and "better than the baseline" in head
    assert "0.35" in head and "0.05" in head and "1.23" in head and "81.2 %" in head  # RM held-out accuracy
    box = head[head.index('class="box warnings"'):]
    assert "reward_length_correlation" in box and "offline stand-in" in head
    # tables: label figures, monitors (warning highlighted), all samples side by side
    label = page[page.index('id="label"'):page.index('id="rm"')]
    assert "position consistency" in label and "first-position rate" in label and "judge tokens" in label
    assert re.search(r'<tr class="warning"><td>reward_length_correlation</td>', page)
    assert re.search(r'<tr class="ok"><td>rm_judge_disagreement</td>', page)
    side = page[page.index('class="side-by-side"'):]
    assert side.count('<td class="text answer policy">') == N_SAMPLES
    assert side.count('<td class="text answer baseline">') == N_SAMPLES
    assert "Baseline answer 11" in side and "line two &amp; more" in side
    # timings from the pipeline and the audit's verdict
    assert "ppo: done (7.0 min)" in page and "audit: done (3 s)" in page
    # the biased judge is right on every gold pair but flips with the order on some: flagged, and warned about
    audit = page[page.index('id="audit"'):page.index('id="label"')]
    assert "UNRELIABLE" in audit and "position consistency" in audit
    assert "Biases beyond position" in audit and "length_gap" in audit and "self_preference" in audit
    assert "judge audit: the judge is UNRELIABLE" in box


def test_untrusted_answers_are_escaped(run_dir, tmp_path):
    page = write_report(run_dir, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;document.title=&#x27;PWNED&#x27;&lt;/script&gt;" in page
    assert "onerror=&quot;" in page


def test_summary_json_collects_the_headline(run_dir, tmp_path):
    write_report(run_dir, tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert s["headline"]["win_rate"] == 0.625 and s["headline"]["win_rate_ci"] == [0.51, 0.74]
    assert s["headline"]["reward_mean_policy"] == 0.35 and s["headline"]["reward_mean_baseline"] == 0.05
    assert s["headline"]["kl_mean"] == 1.234
    assert s["eval"]["reward_gain"] == pytest.approx(0.30)
    assert s["rm"]["eval_accuracy"] == 0.8125 and s["rm"]["eval_accuracy_start"] == 0.5
    assert s["sft"]["steps"] == SFT_STEPS and s["sft"]["eval_loss_start"] == 2.9
    assert s["ppo"]["iterations"] == PPO_ITERS and s["ppo"]["window"] == 5
    assert s["ppo"]["score_mean_end"] > s["ppo"]["score_mean_start"]
    assert s["label"]["pairs_judged"] == 16 and 0 <= s["label"]["position_consistency_rate"] <= 1
    audit = json.loads((run_dir / "audit" / "audit.json").read_text())
    assert s["audit"]["accuracy"] == audit["accuracy"] and s["audit"]["reliable"] == audit["reliable"]
    assert set(s["stages"].values()) == {"done"} and s["timings_s"]["ppo"] == 420.0
    assert any("reward_length_correlation" in w for w in s["warnings"])
    assert s["problems"] == []


def test_one_screen_summary_says_why_the_judge_is_unreliable(run_dir):
    from rlaif.pipeline import run_summary_lines

    lines = run_summary_lines(run_dir)
    audit = json.loads((run_dir / "audit" / "audit.json").read_text())
    line, = (x for x in lines if x.lstrip().startswith("audit"))
    assert not audit["reliable"] and audit["reasons"]
    assert "UNRELIABLE (" in line and all(reason in line for reason in audit["reasons"])
    # the fixture's eval.json has no "pairs" (rlaif eval always writes it): counted from wins, ties, losses
    ev, = (x for x in lines if x.lstrip().startswith("eval"))
    assert "win-rate 0.625 (95% CI 0.510-0.740, 12 pairs); reward 0.050 -> 0.350; KL 1.23" in ev


def test_missing_and_broken_stages_do_not_crash(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = write_report(empty).read_text(encoding="utf-8")
    for stage in ("SFT", "PPO", "reward model", "label", "eval", "judge audit"):
        assert f"{stage}: not run" in page, stage
    s = json.loads((empty / "summary.json").read_text())
    assert set(s["stages"].values()) == {"not run"} and s["headline"]["win_rate"] is None
    # a PPO run killed mid-line and an unreadable eval.json: the rows that exist are plotted, problems listed
    part = tmp_path / "partial"
    (part / "ppo").mkdir(parents=True)
    (part / "eval").mkdir()
    log = MetricsLogger(part / "ppo")
    for it in range(3):
        log.log(it + 1, {"score_mean": 0.1 * it, "kl": 0.01 * it})
    with open(part / "ppo" / "metrics.jsonl", "a") as fh:
        fh.write('{"iteration": 4, "score_me')
    (part / "eval" / "eval.json").write_text("{not json", encoding="utf-8")
    page = write_report(part).read_text(encoding="utf-8")
    assert polyline_points(svgs(page)[REWARD_PLOT]) == 3
    assert "1 unreadable line(s) skipped" in page and "eval.json: unreadable" in page
    assert "SFT: not run" in page


def test_cli_report(run_dir, tmp_path, capsys):
    assert cli_main(["report", str(run_dir), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.html").is_file() and (tmp_path / "cli" / "summary.json").is_file()
    assert str(tmp_path / "cli" / "report.html") in capsys.readouterr().out
    assert cli_main(["report", str(tmp_path / "no-such-run")]) == 2
    assert "no such run folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# a real browser


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit non-interlaced PNG, decoded with zlib (+ numpy)."""
    import numpy as np

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and interlace == 0 and color in (2, 6)
    bpp = 3 if color == 2 else 4
    raw, stride, rows = zlib.decompress(idat), width * bpp, []
    prev = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).copy()
        if ftype == 1:  # Sub: running sum along the row, per channel, mod 256
            line = (np.cumsum(line.reshape(width, bpp).astype(np.int64), axis=0) % 256).astype(np.uint8).ravel()
        elif ftype == 2:  # Up
            line = line + prev
        elif ftype in (3, 4):  # Average, Paeth: sequential along the row
            out, up = bytearray(line.tobytes()), prev.tobytes()
            for i in range(stride):
                a = out[i - bpp] if i >= bpp else 0
                b = up[i]
                if ftype == 3:
                    out[i] = (out[i] + (a + b) // 2) & 255
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    out[i] = (out[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            line = np.frombuffer(bytes(out), np.uint8)
        rows.append(line.tobytes())
        prev = line
    return width, height, rows


def test_chromium_renders_the_report(run_dir, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed and cannot be installed here (not root, no sudo): "
                    "apt-get install chromium")
    page = write_report(run_dir, tmp_path / "site")
    n_plots = len(svgs(page.read_text(encoding="utf-8")))
    dom = headless(browser, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    # the browser parsed every plot with its lines and points
    rendered = re.findall(r'<svg class="plot[^"]*"[^>]*aria-label="([^"]*)"', html)
    assert len(rendered) == n_plots and n_plots >= 20
    eos = re.search(r'<svg class="plot[^"]*"[^>]*aria-label="PPO EOS rate".*?</svg>', html, re.S).group(0)
    assert polyline_points(eos) == PPO_ITERS
    assert all(re.fullmatch(r"[\d.]+,[\d.]+", p) for p in re.findall(r'points="([^"]*)"', eos)[0].split())
    # the injected answer is text: no <script>/<img> element, and it did not change the title
    assert "PWNED" not in re.search(r"<title>(.*?)</title>", html, re.S).group(1)
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;document.title" in html
    # a screenshot that is not blank: many distinct colours, not one background
    shot = tmp_path / "report.png"
    res = headless(browser, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,2000",
                   "--hide-scrollbars", page.as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    width, height, rows = png_pixels(shot)
    assert (width, height) == (1280, 2000)
    bpp = len(rows[0]) // width
    colours = {r[i:i + 3] for r in rows[::4] for i in range(0, len(r), bpp * 4)}
    white = sum(r[i:i + 3] == b"\xff\xff\xff" for r in rows[::4] for i in range(0, len(r), bpp * 4))
    assert len(colours) > 50  # text, plot lines, badges, cards
    assert white / (len(rows[::4]) * len(range(0, len(rows[0]), bpp * 4))) < 0.97
