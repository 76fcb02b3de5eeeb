"""The report page: one HTML file with inline CSS and SVG, no script and no external resource.

Every text that comes from the run (answers, prompts, judge metadata, keys) goes through `esc`; answers are
untrusted model output. A Content-Security-Policy of `default-src 'none'` is a second line: even a tag that
slipped through could not run a script or fetch anything.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from . import svg
from .load import RunData, metric_series, number, numeric_keys
from .summary import STAT_KEYS, redact

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --panel:#f6f8fa; --warn:#9a6700;
        --warn-bg:#fff8c5; --bad:#cf222e; --bad-bg:#ffebe9; --good:#1a7f37; --good-bg:#dafbe1; }
* { box-sizing: border-box; }
body { margin:0; font: 14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; color:var(--fg);
       background:var(--bg); }
main { max-width: 1280px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 5px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 18px 0 8px; }
.sub, .note { color: var(--muted); }
.note { font-size: 13px; }
nav { margin: 10px 0 0; font-size: 13px; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
.stages { display:flex; flex-wrap:wrap; gap:6px; margin: 12px 0 0; }
.badge { border-radius: 12px; padding: 1px 10px; font-size: 12px; border: 1px solid var(--line); }
.badge.done { background: var(--good-bg); border-color: #aceebb; }
.badge.missing { background: var(--panel); color: var(--muted); }
.cards { display:grid; grid-template-columns: repeat(auto-fit, minmax(215px, 1fr)); gap: 12px; margin-top: 16px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .big { font-size: 28px; font-weight: bold; margin: 2px 0; }
.card .big small { font-size: 15px; font-weight: normal; color: var(--muted); }
.card.wide { grid-column: span 2; }
.good { color: var(--good); } .bad { color: var(--bad); }
.box { border-radius: 8px; padding: 10px 14px; margin: 14px 0; border: 1px solid; }
.box.warnings { background: var(--warn-bg); border-color: #d4a72c; }
.box.warnings h3 { margin: 0 0 6px; color: var(--warn); }
.box.ok { background: var(--good-bg); border-color: #aceebb; }
.box.neutral { background: var(--panel); border-color: var(--line); color: var(--muted); }
.box.problems { background: var(--bad-bg); border-color: #ff8182; }
.box ul { margin: 4px 0; padding-left: 20px; }
.notrun { color: var(--muted); font-style: italic; padding: 8px 0; }
.plots { display:grid; grid-template-columns: repeat(auto-fill, minmax(390px, 1fr)); gap: 14px; }
.plots svg.plot { width: 100%; max-width: 640px; height: auto; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
svg.plot text { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; font-size: 11px; fill: #333; }
svg.plot .plot-title { font-size: 13px; font-weight: bold; fill: var(--fg); }
svg.plot .tick { fill: #57606a; font-size: 10.5px; }
svg.plot .axis-label { fill: #57606a; }
svg.plot .grid line { stroke: #eaeef2; }
svg.plot .axis line, svg.plot .axis-line { stroke: #8c959f; }
svg.plot .ref-line { stroke: #8c959f; stroke-dasharray: 4 3; }
svg.plot .ref-label { fill: #57606a; font-size: 10px; paint-order: stroke; stroke: #fff; stroke-width: 3px; }
svg.plot.interval { width: 100%; max-width: 420px; height: auto; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.warning td { background: var(--warn-bg); }
tr.warning td:first-child { border-left: 4px solid #d4a72c; font-weight: bold; }
.side-by-side { width: 100%; table-layout: fixed; }
.side-by-side td.text { white-space: pre-wrap; overflow-wrap: anywhere; }
.side-by-side col.c-id { width: 5%; } .side-by-side col.c-prompt { width: 23%; }
.side-by-side col.c-ans { width: 30%; } .side-by-side col.c-p { width: 12%; }
tr.win td.p { background: var(--good-bg); } tr.loss td.p { background: var(--bad-bg); }
details { margin: 6px 0; } summary { cursor: pointer; color: #0969da; }
.kv td:first-child { color: var(--muted); }
.row { display:flex; flex-wrap:wrap; gap: 24px; align-items:flex-start; }
.row > .col-text { flex: 0 1 600px; min-width: 0; } .row > .col-plot { flex: 1 1 400px; }
"""


def esc(x: Any) -> str:
    return escape(str(x), quote=True)


def fmt(x: Any, digits: int = 4) -> str:
    """A figure for a table cell: None -> "—", numbers to `digits` significant digits."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x) or abs(x) >= 1e307:
            return "inf" if x > 0 else "-inf" if x < 0 else "nan"
        return f"{x:.{digits}g}"
    return esc(x)


def pct(x: Any, digits: int = 1) -> str:
    v = number(x)
    return "—" if v is None else f"{v * 100:.{digits}f} %"


def kv_table(rows: list[tuple[str, str]], cls: str = "kv", numbers: bool = True) -> str:
    """Two columns; labels are escaped here, values must already be HTML (fmt/pct/esc).

    numbers: right-align the values (figures); False for text (judge metadata)."""
    td = '<td class="num">' if numbers else "<td>"
    body = "".join(f"<tr><td>{esc(k)}</td>{td}{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}"><tbody>{body}</tbody></table>'


def not_run(stage: str, what: str) -> str:
    return f'<p class="notrun">{esc(stage)}: not run (no {esc(what)} in this run folder).</p>'


def plot_grid(plots: list[str]) -> str:
    plots = [p for p in plots if p]
    return f'<div class="plots">{"".join(plots)}</div>' if plots else ""


# ---------------------------------------------------------------------------------------------------------
# metric curves


# (title, [(series label, key, dashed)], y label, fixed y range, reference line)
PlotSpec = tuple[str, list[tuple[str, str, bool]], str, tuple[float, float] | None, tuple[float, str] | None]

SFT_PLOTS: list[PlotSpec] = [
    ("SFT loss", [("train", "loss", False), ("held-out", "eval_loss", True)], "cross-entropy (nats/token)",
     None, None),
    ("SFT held-out perplexity", [("held-out", "eval_ppl", False)], "perplexity", None, None),
    ("SFT learning rate", [("lr", "lr", False)], "learning rate", None, None),
    ("SFT gradient norm", [("grad norm", "grad_norm", False)], "global norm (before clipping)", None, None),
    ("SFT throughput", [("tokens/s", "tokens_per_s", False)], "answer tokens / s", None, None),
]
RM_PLOTS: list[PlotSpec] = [
    ("RM loss", [("train", "loss", False), ("held-out", "eval_loss", True)], "Bradley-Terry loss", None, None),
    ("RM pairwise accuracy", [("train batch", "accuracy", False), ("held-out", "eval_accuracy", True)],
     "accuracy", (0.0, 1.0), (0.5, "chance")),
    ("RM reward margin (chosen - rejected)", [("train batch", "margin_mean", False),
                                              ("held-out", "eval_margin_mean", True)], "reward margin", None, None),
    ("RM reward scale", [("train std", "reward_std", False), ("held-out std", "eval_reward_std", True)],
     "reward std", None, None),
    ("RM learning rate", [("lr", "lr", False)], "learning rate", None, None),
]
PPO_PLOTS: list[PlotSpec] = [
    ("PPO reward-model score (training batch)", [("raw score", "reward_mean", False),
                                                 ("after the EOS rule", "score_mean", True)],
     "mean per rollout (before any baseline)", None, None),
    ("PPO held-out validation: reward-model score", [("validation prompts", "val_reward_mean", False)],
     "mean per answer", None, None),
    ("PPO held-out validation: judge win-rate vs initial policy", [("win-rate", "val_win_rate", False)],
     "win-rate (ties = ½)", (0.0, 1.0), (0.5, "initial policy")),
    ("PPO score spread within prompts", [("std of centred score", "score_centred_std", False)],
     "the signal PPO sees", None, None),
    ("PPO KL to reference", [("KL (sequence)", "kl", False)], "nats per response", None, None),
    ("PPO entropy", [("entropy", "entropy", False)], "nats per token", None, None),
    ("PPO response length", [("length", "response_length", False)], "tokens", None, None),
    ("PPO clip fraction", [("policy", "clipfrac", False), ("value", "vf_clipfrac", True)], "fraction of tokens",
     (0.0, 0.0), None),
    ("PPO EOS rate", [("ended with EOS", "eos_rate", False)], "fraction of rollouts", (0.0, 1.0), None),
    ("PPO approx. KL per update", [("approx KL", "approx_kl", False)], "nats per token", None, None),
    ("PPO KL coefficient", [("beta", "kl_coef", False)], "beta", None, None),
    ("PPO policy loss", [("policy loss", "policy_loss", False)], "loss", None, None),
    ("PPO value loss", [("value loss", "value_loss", False)], "loss", None, None),
    ("PPO values and returns", [("value", "value_mean", False), ("return", "return_mean", True)], "mean per token",
     None, None),
    ("PPO reward-model ensemble spread", [("std", "ensemble_std", False)], "std across models", None, None),
    ("PPO time per iteration", [("generate", "s_generate", False), ("score", "s_score", False),
                                ("update", "s_update", False), ("total", "s_iteration", True)], "seconds", None,
     None),
]


def curves(rows: list[dict], specs: list[PlotSpec], x_label: str, stage: str) -> str:
    """The curated plots of a stage, then every other numeric series under a fold."""
    used: set[str] = set()
    plots = []
    for title, lines, y_label, y_range, hline in specs:
        series = []
        for label, key, dashed in lines:
            xs, ys = metric_series(rows, key)
            if xs:
                series.append(svg.Series(label, xs, ys, dashed=dashed))
                used.add(key)
        plots.append(svg.line_plot(title, series, x_label, y_label, y_range, hline))
    html = plot_grid(plots)
    others = [k for k in numeric_keys(rows) if k not in used]
    extra = [svg.line_plot(f"{stage} {k}", [svg.Series(k, *metric_series(rows, k))], x_label, k) for k in others]
    if any(extra):
        html += (f"<details><summary>{len(others)} more {esc(stage)} series ({esc(', '.join(others))})</summary>"
                 f"{plot_grid(extra)}</details>")
    return html


# ---------------------------------------------------------------------------------------------------------
# sections


def headline(summary: dict, data: RunData) -> str:
    ev = summary.get("eval")
    cards = []
    if ev:
        ci = ev.get("win_rate_ci") or [None, None]
        wr = ev.get("win_rate")
        verdict = ev.get("verdict") or ""
        cls = "good" if ci[0] is not None and ci[0] > 0.5 else "bad" if ci[1] is not None and ci[1] < 0.5 else ""
        bar = svg.interval_bar(wr, ci[0], ci[1]) if wr is not None else ""
        counts = " · ".join(f"{n} {esc(k)}" for k in ("wins", "losses", "ties") if (n := ev.get(k)) is not None)
        cards.append(
            f'<div class="card wide"><div class="label">Win-rate of the policy vs the baseline (judge, both orders, '
            f'ties = ½)</div><div class="big {cls}">{pct(wr)} <small>95 % CI [{pct(ci[0])}, {pct(ci[1])}]</small>'
            f'</div>{bar}<div class="note">{esc(verdict)}{" · " if verdict else ""}{fmt(ev.get("prompts"))} '
            f"held-out prompts{' · ' + counts if counts else ''}</div></div>")
        gain = ev.get("reward_gain")
        cards.append(
            f'<div class="card"><div class="label">Mean reward-model score</div><div class="big">'
            f'{fmt(ev.get("reward_mean_policy"), 3)} <small>policy</small></div><div>{fmt(ev.get("reward_mean_baseline"), 3)}'
            f' baseline · change <b class="{"good" if (gain or 0) > 0 else "bad" if (gain or 0) < 0 else ""}">'
            f'{"+" if (gain or 0) > 0 else ""}{fmt(gain, 3)}</b></div></div>')
        cards.append(
            f'<div class="card"><div class="label">KL to the reference (policy)</div><div class="big">'
            f'{fmt(ev.get("kl_mean_policy"), 3)} <small>nats / answer</small></div><div>mean length '
            f'{fmt(ev.get("length_mean_policy"), 3)} vs {fmt(ev.get("length_mean_baseline"), 3)} tokens (baseline)'
            "</div></div>")
    else:
        cards.append('<div class="card wide"><div class="label">Win-rate</div><p class="notrun">eval: not run '
                     "(no eval/eval.json): no win-rate, reward or KL on held-out prompts.</p></div>")
    rm = summary.get("rm")
    if rm and rm.get("eval_accuracy") is not None:
        cards.append(f'<div class="card"><div class="label">Reward model held-out accuracy</div><div class="big">'
                     f'{pct(rm["eval_accuracy"])}</div><div>{fmt(rm.get("eval_pairs"))} held-out pairs (chance 50 %)'
                     "</div></div>")
    html = f'<section id="headline"><div class="cards">{"".join(cards)}</div>'
    warnings = summary.get("warnings") or []
    if warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
        html += f'<div class="box warnings" id="warnings"><h3>⚠ Warnings ({len(warnings)})</h3><ul>{items}</ul></div>'
    elif ev:
        html += '<div class="box ok" id="warnings">No warnings: no monitor crossed its threshold.</div>'
    else:
        html += '<div class="box neutral" id="warnings">No monitors measured (eval not run).</div>'
    judge = (data.doc("eval", "eval.json").get("judge") or {}) if ev else {}
    if isinstance(judge, dict) and judge.get("offline_stand_in"):
        html += (f'<p class="note">Judge: {esc(judge.get("judge", ""))}, an offline stand-in'
                 f'{": " + esc(judge["note"]) if judge.get("note") else ""}. Win-rates measure agreement with it.</p>')
    if summary.get("problems"):
        items = "".join(f"<li>{esc(p)}</li>" for p in summary["problems"])
        html += f'<div class="box problems"><b>Files that could not be read fully</b><ul>{items}</ul></div>'
    return html + "</section>"


def sft_section(data: RunData, summary: dict) -> str:
    rows = data.stages["sft"].metrics
    body = not_run("SFT", "sft/metrics.jsonl") if not rows else ""
    if rows:
        s = summary["sft"]
        body += kv_table([("optimizer steps", fmt(s["steps"])), ("final training loss", fmt(s["final_loss"])),
                          ("held-out loss: start → end", f'{fmt(s["eval_loss_start"])} → {fmt(s["eval_loss_end"])}')])
        body += curves(rows, SFT_PLOTS, "optimizer step", "SFT")
    extra = data.doc("sft", "summary.json")
    if extra:
        body += f"<details><summary>sft/summary.json</summary>{kv_table(flat_rows(extra))}</details>"
    return f'<section id="sft"><h2>Supervised fine-tuning</h2>{body}</section>'


def audit_section(data: RunData) -> str:
    a = data.doc("audit", "audit.json")
    if not a:
        return f'<section id="audit"><h2>Judge audit</h2>{not_run("judge audit", "audit/audit.json")}</section>'
    reliable = a.get("reliable")
    verdict = ("<b class=\"good\">RELIABLE</b>" if reliable else "<b class=\"bad\">UNRELIABLE</b>: "
               + esc("; ".join(str(r) for r in a.get("reasons", []) or []))) if reliable is not None else "—"
    kinds = a.get("by_kind") if isinstance(a.get("by_kind"), dict) else {}
    head = "<tr><th>kind</th><th>pairs</th><th>accuracy</th><th>consistency</th><th>first-position rate</th>" \
           "<th>tie rate</th></tr>"
    body = "".join(
        f"<tr><td>{esc(k)}</td><td class=\"num\">{fmt(s.get('pairs'))}</td><td class=\"num\">{pct(s.get('accuracy'))}"
        f"</td><td class=\"num\">{pct(s.get('consistency_rate'))}</td><td class=\"num\">"
        f"{pct(s.get('first_position_rate'))}</td><td class=\"num\">{pct(s.get('tie_rate'))}</td></tr>"
        for k, s in [*kinds.items(), ("all", a)] if isinstance(s, dict))
    th = a.get("thresholds") if isinstance(a.get("thresholds"), dict) else {}
    lines = []
    if number(th.get("min_accuracy")) is not None:
        lines.append((th["min_accuracy"], f"min accuracy {th['min_accuracy']}"))
    lines.append((0.5, "0.5: unbiased first position"))
    cats = [*kinds.keys(), "all"]
    stats = [*[kinds[k] for k in kinds], a]
    chart = svg.bar_chart("Judge audit on the gold set", cats, [
        ("accuracy", [number(s.get("accuracy")) for s in stats]),
        ("consistency", [number(s.get("consistency_rate")) for s in stats]),
        ("first-position rate", [number(s.get("first_position_rate")) for s in stats])],
        y_label="rate", y_range=(0.0, 1.0), hlines=lines)
    judge = redact(a.get("judge")) if isinstance(a.get("judge"), dict) else {}
    return (f'<section id="audit"><h2>Judge audit</h2><p>Verdict on {fmt(a.get("pairs"))} gold pairs of '
            f'{esc(a.get("gold", "?"))}, judged in both orders: {verdict}</p><div class="row"><div class="col-text">'
            f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"
            f'<p class="note">accuracy: the both-order label favours the better answer; consistency: the same winner '
            f"in both orders; first-position rate: share of orderings won by the answer shown first (50 % = no "
            f"position bias).</p>{bias_table(a.get('biases') if isinstance(a.get('biases'), dict) else {})}"
            f"{panel_table(a)}{judge_table(judge)}</div><div class=\"col-plot\">"
            f"{plot_grid([chart])}</div></div></section>")


BIAS_ABOUT = {"length_gap": "verbosity: accuracy when the better answer is longer minus when it is shorter",
              "padding_gain": "verbosity: rise of P(worse better) when filler is appended to the worse answer",
              "self_preference": "P(the judge family's own answer better) − 0.5, at equal correctness"}


def bias_table(biases: dict) -> str:
    """The audit's bias figures (audit_bias.py): value, threshold, status; a panel's members after the panel."""
    rows = []
    for who, figs in [("", biases), *[(f"{n}: ", f) for n, f in (biases.get("members") or {}).items()
                                      if isinstance(f, dict)]]:
        for key, f in figs.items():
            if key == "members" or not isinstance(f, dict):
                continue
            rows.append(f"<tr class=\"{'warning' if f.get('biased') else 'ok'}\"><td>{esc(who + key)}</td>"
                        f"<td class=\"num\">{fmt(f.get('value'))}</td><td class=\"num\">{fmt(f.get('threshold'))}</td>"
                        f"<td>{'⚠ biased' if f.get('biased') else 'ok'}</td><td>{esc(BIAS_ABOUT.get(key, ''))}</td></tr>")
    if not rows:
        return ""
    return ("<h3>Biases beyond position</h3><table class=\"monitors\"><thead><tr><th>bias</th><th>value</th>"
            f"<th>threshold</th><th>status</th><th>what it measures</th></tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table>")


def judge_table(judge: dict) -> str:
    if not judge:
        return ""
    rows = [(k, esc(v)) for k, v in judge.items() if k != "members"]
    members = judge.get("members") if isinstance(judge.get("members"), list) else []
    rows += [(f"member {m.get('name', i)}", esc(f"{m.get('judge', '?')} (weight {fmt(m.get('weight'))})"))
             for i, m in enumerate(members) if isinstance(m, dict)]
    return f"<h3>Judge</h3>{kv_table(rows, numbers=False)}"


def panel_table(stats: dict) -> str:
    """A judge panel's figures (`member_figures`): one row per member, then the panel's agreement."""
    members = stats.get("members") if isinstance(stats.get("members"), dict) else {}
    if not members:
        return ""
    with_acc = any("accuracy" in m for m in members.values() if isinstance(m, dict))
    head = ("<tr><th>panel member</th>" + ("<th>accuracy</th>" if with_acc else "")
            + "<th>consistency</th><th>first-position rate</th><th>agrees with the panel</th></tr>")
    body = "".join(
        f"<tr><td>{esc(name)}</td>" + (f"<td class=\"num\">{pct(m.get('accuracy'))}</td>" if with_acc else "")
        + f"<td class=\"num\">{pct(m.get('consistency_rate'))}</td><td class=\"num\">"
        f"{pct(m.get('first_position_rate'))}</td><td class=\"num\">{pct(m.get('agreement_with_panel'))}</td></tr>"
        for name, m in members.items() if isinstance(m, dict))
    return (f"<table><thead>{head}</thead><tbody>{body}</tbody></table><p class=\"note\">Every member picks the "
            f"same winner on {pct(stats.get('panel_agreement'))} of the pairs; mean disagreement (max − min of the "
            f"members' P(a better)) {fmt(stats.get('mean_disagreement'))}.</p>")


def rounds_section(data: RunData) -> str:
    rounds = data.rounds.get("rounds") if isinstance(data.rounds.get("rounds"), list) else []
    if not rounds:
        return ""

    def ci(c) -> str:
        return f"({pct(c[0])}–{pct(c[1])})" if isinstance(c, list) and len(c) == 2 else ""

    body = "".join(
        f"<tr><td class=\"num\">{fmt(r.get('round'))}</td><td class=\"num\">{pct(r.get('win_rate_vs_sft'))} "
        f"{ci(r.get('ci_vs_sft'))}</td><td class=\"num\">{pct(r.get('win_rate_vs_previous'))} "
        f"{ci(r.get('ci_vs_previous'))}</td><td class=\"num\">{pct(r.get('rm_heldout_accuracy'))}</td>"
        f"<td class=\"num\">{pct(r.get('previous_rm_accuracy_old_labels'))} → "
        f"{pct(r.get('previous_rm_accuracy_new_labels'))}</td></tr>"
        for r in rounds if isinstance(r, dict))
    return ('<section id="rounds"><h2>Rounds (iterative RLAIF)</h2><table><thead><tr><th>round</th>'
            "<th>win-rate vs SFT (95 % CI)</th><th>vs the previous round</th><th>RM held-out accuracy</th>"
            "<th>previous RM: old labels → new on-policy labels</th></tr></thead>"
            f"<tbody>{body}</tbody></table><p class=\"note\">Each round: the last policy writes new answers, the "
            f"judge labels them, the reward model is trained on every round's labels "
            f"({esc(data.rounds.get('rm_update', '?'))}), the policy is aligned from where it stopped (KL reference "
            f"{esc(data.rounds.get('reference', '?'))}). A previous RM that scores the new on-policy labels worse than "
            "its own held-out labels shows the distribution shift the new labels correct.</p></section>")


def human_review_section(data: RunData) -> str:
    h = data.human_review
    if not h:
        return ('<section id="review"><h2>Human spot-checks</h2><p class="notrun">No label/human_labels.jsonl: '
                "run <code>rlaif review RUN_DIR</code> to check a sample of the labels by hand.</p></section>")
    ci = h.get("agreement_ci") or [None, None]
    rows = [("pairs reviewed (skipped)", f"{fmt(h.get('reviewed'))} ({fmt(h.get('skipped'))})"),
            ("agreement with the judge (95 % Wilson CI)",
             f"{pct(h.get('agreement'))} ({pct(ci[0])}–{pct(ci[1])}), {fmt(h.get('agree'))} of "
             f"{fmt(h.get('compared'))}"),
            ("Cohen's kappa (left / right / tie, as shown)", fmt(h.get("kappa")))]
    members = h.get("members") if isinstance(h.get("members"), dict) else {}
    for name, m in members.items():
        mci = m.get("agreement_ci") or [None, None]
        rows.append((f"panel member {name}: agreement (CI), kappa",
                     f"{pct(m.get('agreement'))} ({pct(mci[0])}–{pct(mci[1])}), {fmt(m.get('kappa'))}"))
    return (f'<section id="review"><h2>Human spot-checks</h2>{kv_table(rows)}<p class="note">A blind, '
            "stratified sample of the labels judged by a person (<code>rlaif review</code>); agreement counts "
            "a tie as a side, kappa corrects it for chance.</p></section>")


def label_section(data: RunData) -> str:
    s = data.doc("label", "label_summary.json")
    prefs = data.stages["label"].rows.get("preferences.jsonl", [])
    if not s and not prefs:
        return f'<section id="label"><h2>AI-feedback labels</h2>{not_run("label", "label/label_summary.json")}</section>'
    figures = kv_table([
        ("pairs judged (written / dropped)", f"{fmt(s.get('pairs_judged'))} ({fmt(s.get('pairs_written'))} / "
                                             f"{fmt(s.get('pairs_dropped'))})"),
        ("position consistency (same winner in both orders)", pct(s.get("position_consistency_rate"))),
        ("first-position rate (50 % = unbiased)", pct(s.get("first_position_rate"))),
        ("tie rate", pct(s.get("tie_rate"))),
        ("parse failures", fmt(s.get("parse_failures"))),
        ("judge tokens (cost)", fmt(s.get("judge_tokens"))),
        ("judge time (cost)", f"{fmt(s.get('judge_time_s'))} s"),
        ("wall time of the last run", f"{fmt(s.get('wall_time_this_run_s'))} s"),
        *[(k.replace("_", " "), fmt(s[k])) for k in ("judge_cost_usd", "cost_usd") if number(s.get(k)) is not None],
    ]) if s else '<p class="notrun">label/label_summary.json missing: figures not available.</p>'
    probs = [number(r.get("label_prob")) for r in prefs]
    hist = svg.histogram("Label confidence: P(chosen better)", [p for p in probs if p is not None], 0.5, 1.0, 10,
                         "label_prob") if prefs else ""
    judge = redact(s.get("judge")) if isinstance(s.get("judge"), dict) else {}
    return (f'<section id="label"><h2>AI-feedback labels</h2><div class="row"><div class="col-text">{figures}'
            f'{panel_table(s) if s else ""}{judge_table(judge)}</div><div class="col-plot">{plot_grid([hist])}</div></div></section>')


def rm_section(data: RunData, summary: dict) -> str:
    rows = data.stages["rm"].metrics
    s = data.doc("rm", "summary.json")
    if not rows and not s:
        return f'<section id="rm"><h2>Reward model</h2>{not_run("reward model", "rm/metrics.jsonl or summary.json")}</section>'
    r = summary["rm"]
    ev = s.get("eval") if isinstance(s.get("eval"), dict) else {}
    figures = kv_table([
        ("held-out accuracy (end)", f"<b>{pct(r['eval_accuracy'])}</b>"),
        ("held-out accuracy (before training)", pct(r["eval_accuracy_start"])),
        ("held-out pairs / training pairs", f"{fmt(r['eval_pairs'])} / {fmt(r['train_pairs'])}"),
        ("held-out margin (chosen − rejected)", fmt(r["eval_margin_mean"])),
        ("held-out reward std", fmt(number(ev.get("reward_std")))),
        ("backbone", esc(s.get("model", "—"))), ("input format", esc(s.get("input_format", "—"))),
        ("optimizer steps", fmt(r["steps"])),
    ])
    return (f'<section id="rm"><h2>Reward model</h2>{figures}'
            f'{curves(rows, RM_PLOTS, "optimizer step", "RM") if rows else ""}</section>')


def ppo_section(data: RunData, summary: dict) -> str:
    rows = data.stages["ppo"].metrics
    if not rows:
        return f'<section id="ppo"><h2>PPO</h2>{not_run("PPO", "ppo/metrics.jsonl")}</section>'
    p = summary["ppo"]

    def start_end(key: str) -> str:
        return f"{fmt(p[key + '_start'])} → {fmt(p[key + '_end'])}"

    figures = kv_table([
        ("iterations", fmt(p["iterations"])),
        (f"score (mean of the first → last {p['window']} iterations)", start_end("score_mean")),
        ("raw reward", start_end("reward_mean")), ("KL to reference", start_end("kl")),
        ("entropy", start_end("entropy")), ("response length", start_end("response_length")),
        ("EOS rate", start_end("eos_rate")),
        *([("held-out validation: reward-model score gain over the initial policy (first → last validation)",
            f"{fmt(p['val_reward_gain_first'])} → {fmt(p['val_reward_gain_last'])}"
            + (f" (± {fmt(p['val_reward_gain_se_last'])} standard error)"
               if p.get("val_reward_gain_se_last") is not None else ""))]
          if p.get("val_reward_gain_last") is not None else []),
        *([("held-out validation: judge win-rate vs the initial policy (first → last validation)",
            f"{fmt(p['val_win_rate_first'])} → {fmt(p['val_win_rate_last'])}")]
          if p.get("val_win_rate_last") is not None else []),
    ])
    return f'<section id="ppo"><h2>PPO</h2>{figures}{curves(rows, PPO_PLOTS, "iteration", "PPO")}</section>'


def eval_section(data: RunData, summary: dict) -> str:
    ev = data.doc("eval", "eval.json")
    samples = data.stages["eval"].rows.get("samples.jsonl", [])
    if not ev and not samples:
        return f'<section id="eval"><h2>Evaluation</h2>{not_run("eval", "eval/eval.json")}</section>'
    html = '<section id="eval"><h2>Evaluation on held-out prompts</h2>'
    if ev:
        f = summary["eval"]
        html += (f"<p>Policy <code>{esc(ev.get('policy', '?'))}</code> against baseline "
                 f"<code>{esc(ev.get('baseline', '?'))}</code> on {fmt(ev.get('prompts'))} prompts; win-rate "
                 f"<b>{pct(f['win_rate'])}</b> (95 % bootstrap interval {pct((f['win_rate_ci'] or [None])[0])} – "
                 f"{pct((f['win_rate_ci'] or [None, None])[1])}, {fmt(ev.get('bootstrap_samples'))} resamples).</p>")
        pol = ev.get("policy_stats") if isinstance(ev.get("policy_stats"), dict) else {}
        base = ev.get("baseline_stats") if isinstance(ev.get("baseline_stats"), dict) else {}
        keys = list(dict.fromkeys([*STAT_KEYS, *base.keys(), *pol.keys()]))
        rows = []
        for k in keys:
            b, p = number(base.get(k)), number(pol.get(k))
            diff = p - b if p is not None and b is not None else None
            rows.append(f"<tr><td>{esc(k)}</td><td class=\"num\">{fmt(b)}</td><td class=\"num\">{fmt(p)}</td>"
                        f"<td class=\"num\">{'+' if (diff or 0) > 0 else ''}{fmt(diff)}</td></tr>")
        html += ('<table class="stats"><thead><tr><th>statistic</th><th>baseline</th><th>policy</th><th>change</th>'
                 f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        monitors = [m for m in ev.get("monitors", []) or [] if isinstance(m, dict)]
        if monitors:
            mrows = "".join(
                f"<tr class=\"{'warning' if m.get('warning') else 'ok'}\"><td>{esc(m.get('name', '?'))}</td>"
                f"<td class=\"num\">{fmt(m.get('value'))}</td><td class=\"num\">{fmt(m.get('threshold'))}</td>"
                f"<td>{'⚠ warning' if m.get('warning') else 'ok'}</td><td>{esc(m.get('about', ''))}</td></tr>"
                for m in monitors)
            html += ("<h3>Reward-hacking monitors</h3><table class=\"monitors\"><thead><tr><th>monitor</th>"
                     "<th>value</th><th>threshold</th><th>status</th><th>what it measures</th></tr></thead>"
                     f"<tbody>{mrows}</tbody></table>")
        js = ev.get("judge_stats") if isinstance(ev.get("judge_stats"), dict) else {}
        if js:
            html += (f'<p class="note">The judge on these pairs: position consistency {pct(js.get("consistency_rate"))}, '
                     f'first-position rate {pct(js.get("first_position_rate"))}, ties {pct(js.get("tie_rate"))}, '
                     f'parse failures {fmt(js.get("parse_failures"))}.</p>{panel_table(js)}')
        judge = redact(ev.get("judge")) if isinstance(ev.get("judge"), dict) else {}
        html += judge_table(judge)
    if samples:
        rb = [number(r.get("reward_baseline")) for r in samples]
        rp = [number(r.get("reward_policy")) for r in samples]
        pb = [number(r.get("prob_policy_better")) for r in samples]
        html += plot_grid([
            svg.scatter_plot("Reward per held-out prompt", rb, rp, "baseline reward", "policy reward",
                             labels=[str(r.get("id", i)) for i, r in enumerate(samples)]),
            svg.histogram("Judge: P(policy better) per prompt", [p for p in pb if p is not None], 0.0, 1.0, 10,
                          "P(policy better), both orders"),
        ])
    return html + "</section>"


def samples_section(data: RunData) -> str:
    samples = data.stages["eval"].rows.get("samples.jsonl", [])
    if not samples:
        return (f'<section id="samples"><h2>Held-out answers side by side</h2>'
                f'{not_run("eval", "eval/samples.jsonl")}</section>')
    rows = []
    for i, r in enumerate(samples):
        p = number(r.get("prob_policy_better"))
        cls = "win" if p is not None and p > 0.5 else "loss" if p is not None and p < 0.5 else "tie"
        ref = r.get("reference")
        ref_html = (f"<details><summary>reference</summary><div class=\"text\">{esc(ref)}</div></details>"
                    if ref else "")
        rows.append(
            f'<tr class="{cls}"><td>{esc(r.get("id", i))}</td><td class="text">{esc(r.get("prompt", ""))}{ref_html}'
            f'</td><td class="text answer baseline">{esc(r.get("baseline", ""))}</td>'
            f'<td class="text answer policy">{esc(r.get("policy", ""))}</td><td class="num p">{pct(p, 0)}<br>'
            f'<span class="note">reward {fmt(number(r.get("reward_baseline")), 3)} → '
            f'{fmt(number(r.get("reward_policy")), 3)}</span></td></tr>')
    return (f'<section id="samples"><h2>Held-out answers side by side ({len(samples)} prompts)</h2>'
            '<p class="note">Green: the judge prefers the aligned policy (P &gt; 50 %); red: the baseline. '
            "Answers are shown as plain text.</p>"
            '<table class="side-by-side"><colgroup><col class="c-id"><col class="c-prompt"><col class="c-ans">'
            '<col class="c-ans"><col class="c-p"></colgroup><thead><tr><th>id</th><th>prompt</th><th>baseline</th>'
            f"<th>aligned policy</th><th>P(policy better)</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "</section>")


def flat_rows(obj: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dict -> (dotted key, formatted value) rows."""
    out = []
    for k, v in redact(obj).items():
        if isinstance(v, dict):
            out += flat_rows(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", fmt(v) if isinstance(v, (int, float)) or v is None else esc(v)))
    return out


NAV = [("headline", "Headline"), ("sft", "SFT"), ("audit", "Judge audit"), ("label", "Labels"), ("review", "Human checks"),
       ("rm", "Reward model"), ("ppo", "PPO"), ("eval", "Eval"), ("rounds", "Rounds"), ("samples", "Answers")]


def render_page(data: RunData, summary: dict, generated: str) -> str:
    def seconds(name: str) -> str:
        t = number(data.timings.get(name))
        return f" ({t / 60:.1f} min)" if t is not None and t >= 60 else f" ({t:.0f} s)" if t is not None else ""

    stages = "".join(
        f'<span class="badge {"done" if state == "done" else "missing"}">{esc(name)}: {esc(state)}'
        f"{seconds(name)}</span>" for name, state in summary["stages"].items())
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in NAV)
    title = f"rlaif run report: {data.run_dir.name or data.run_dir}"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{esc(title)}</h1>",
        f'<div class="sub">{esc(data.run_dir)} · generated {esc(generated)}</div>',
        f'<div class="stages">{stages}</div><nav>{nav}</nav>',
        headline(summary, data),
        sft_section(data, summary),
        audit_section(data),
        label_section(data),
        human_review_section(data),
        rm_section(data, summary),
        ppo_section(data, summary),
        eval_section(data, summary),
        rounds_section(data),
        samples_section(data),
        "</main></body></html>",
    ])


__all__ = ["render_page", "esc", "fmt", "pct", "CSS"]
