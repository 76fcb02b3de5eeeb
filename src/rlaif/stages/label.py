"""AI-feedback labels: sample K answers per prompt, judge pairs in both orders, write preference rows (`rlaif label`).

Per prompt: 1) skip it when all its pairs are already in the output (a rerun resumes); 2) seed torch from
(run.seed, prompt id) and sample K answers in one batch, so a rerun reproduces the same answers and pairs;
3) form pairs (all i < j, or consecutive), leaving out pairs of identical texts and pairs already written;
4) judge each pair as (a, b) and (b, a) and debias: label_prob = ½(p_ab + 1 − p_ba) = P(a better)
(Lee et al. 2023); 5) write one row per pair, appended and fsynced at once: `chosen` is the side with
P >= 0.5 and `label_prob` is re-expressed as P(chosen better); position-inconsistent pairs are kept with their
soft label (inconsistent=soft) or moved to `dropped.jsonl` (inconsistent=drop). Pair ids
(`<prompt id>:<i>-<j>`) in the output and in dropped.jsonl are never judged again, so a killed run loses at most
the pair in flight and never writes a pair twice. A pair whose judge call failed (an API past its retry budget)
is not written either: it is counted (`pairs_failed_this_run`, with a warning) and a rerun judges it again.
6) the summary over every judged pair goes to `<output_dir>/label_summary.json`, with tokens and `cost_usd`;
with a judge panel (`label.judge.panel`) each row also keeps every member's soft label and the disagreement, and
the summary each member's consistency and agreement with the panel.
The output feeds `rlaif rm rm.data=<output>`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from ..checkpoint import save_json
from ..config import ConfigError, field, require_min
from ..data.jsonl import append_jsonl, cut_torn_tail
from ..data.prompts import PromptRow, load_prompts
from ..judges import JudgeConfig, judge_pairs_both_orders, make_judge
from ..judges.base import PairVerdict, PairwiseJudge, member_figures
from ..models.loading import load_causal_lm, load_tokenizer
from ..rollout.generate import sample_responses
from ..runtime import RunConfig, autocast_for, setup_run

log = logging.getLogger("rlaif.label")


@dataclass
class LabelConfig:
    policy: str = field("smollm2-135m-instruct", help="model that writes the answers: built-in name, folder, "
                        ".gguf or hub id (e.g. the SFT output)")
    prompts: str = field("builtin:demo-train", help="prompt JSONL ({id, prompt | messages, reference?}) or "
                         "builtin:demo-train")
    max_prompts: int = field(0, help="label only the first N prompts (0 = all)")
    responses_per_prompt: int = field(2, help="K answers sampled per prompt")
    pairing: Literal["all", "consecutive"] = field("all", help="all: every i < j (K(K-1)/2 pairs); "
                                                   "consecutive: (0,1), (1,2), ...")
    temperature: float = field(0.7, help="sampling temperature (> 0: the K answers must differ)")
    top_p: float = field(1.0, help="nucleus sampling")
    max_new_tokens: int = field(64, help="budget of new tokens per answer")
    max_prompt_tokens: int = field(512, help="longer prompts keep their last tokens")
    prompts_per_batch: int = field(8, help="prompts whose K answers are sampled in one generate() batch (the "
                                   "answers are seeded per batch, so changing this changes them)")
    use_references: bool = field(True, help="show a prompt's `reference` to the judge when it has one")
    judge: JudgeConfig = field(default_factory=JudgeConfig, help="the judge")
    inconsistent: Literal["soft", "drop"] = field(
        "soft", help="pairs whose winner flips with the order: soft = keep the averaged soft label; drop = write "
        "them to dropped.jsonl instead")
    output: str = field("", help="preference JSONL to append to (empty = <run.output_dir>/preferences.jsonl); "
                      "run.resume=never empties it and dropped.jsonl first")

    def validate(self) -> None:
        require_min(self, "label", 0, "max_prompts")
        require_min(self, "label", 2, "responses_per_prompt")
        require_min(self, "label", 1, "max_new_tokens", "max_prompt_tokens", "prompts_per_batch")
        if self.temperature <= 0:
            raise ConfigError("config key 'label.temperature': must be > 0 (greedy answers would all be equal)")


# ---------------------------------------------------------------------------------------------------------
# helpers (each a step of the loop)


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A per-prompt seed from (run seed, prompt id): independent of order and of what ran before."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:8], "little") % (2**63)


def pair_indices(k: int, pairing: str) -> list[tuple[int, int]]:
    if pairing == "consecutive":
        return [(i, i + 1) for i in range(k - 1)]
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


def pair_id(prompt_id: str, i: int, j: int) -> str:
    return f"{prompt_id}:{i}-{j}"


def read_done(path: Path) -> list[dict]:
    """Rows already written; a line torn by a kill (no trailing newline) is cut off first."""
    if cut_torn_tail(path):
        log.warning("%s: removing a partial last line left by an interrupted run", path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def sample_answers(model, tokenizer, chunk: list[PromptRow], cfg: LabelConfig, seed: int, device, amp
                   ) -> tuple[list[list[str]], int]:
    """Step 2: K answers for each prompt of a chunk in one generate batch, reproducible from (seed, the chunk's
    first prompt id): chunks are cut from the whole prompt list, so a rerun regenerates exactly the same answers.
    Returns the answers per prompt and the number of prompts cut on the left."""
    k = cfg.responses_per_prompt
    torch.manual_seed(prompt_seed(seed, chunk[0].id))
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(prompt_seed(seed, chunk[0].id))
    rollout, n_trunc = sample_responses(
        model, tokenizer, [row for row in chunk for _ in range(k)], max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_p=cfg.top_p, max_prompt_tokens=cfg.max_prompt_tokens,
        batch_size=len(chunk) * k, device=device, autocast=amp(),
    )
    return [rollout.responses[i * k:(i + 1) * k] for i in range(len(chunk))], n_trunc // k


def _mass(m: float | None) -> float | None:
    return None if m is None else round(float(m), 6)


def preference_row(row: PromptRow, i: int, j: int, a: str, b: str, v: PairVerdict, meta: dict) -> dict:
    """Step 5: chosen = the side with P >= 0.5; label_prob = P(chosen better)."""
    a_wins = v.label_prob >= 0.5
    return {
        "id": pair_id(row.id, i, j), "prompt_id": row.id, "prompt": row.text,
        **({"messages": row.as_chat()} if len(row.messages) > 1 else {}),
        "chosen": a if a_wins else b, "rejected": b if a_wins else a,
        "label_prob": round(v.label_prob if a_wins else 1.0 - v.label_prob, 6),
        "judge": {
            **meta, "responses": [i, j] if a_wins else [j, i],
            "p_first_better_ab": round(v.p_ab, 6), "p_first_better_ba": round(v.p_ba, 6),
            "prob_a_better": round(v.label_prob, 6), "consistent": v.consistent,
            "first_position_ab": v.first_ab, "first_position_ba": v.first_ba,
            "parse_failures": v.parse_failures, "tokens": v.tokens, "latency_s": round(v.latency_s, 4),
            "cost_usd": round(v.cost_usd, 8), "raw_ab": v.raw_ab, "raw_ba": v.raw_ba,
            **({"label_source_ab": v.source_ab, "label_source_ba": v.source_ba}
               if v.source_ab is not None or v.source_ba is not None else {}),
            **({"label_mass_ab": _mass(v.mass_ab), "label_mass_ba": _mass(v.mass_ba)}
               if v.mass_ab is not None or v.mass_ba is not None else {}),
            **(panel_fields(v) if v.members else {}),
        },
    }


def panel_fields(v: PairVerdict) -> dict:
    """A panel's row: each member's soft label in the row's frame (prob_a_better = P(response i better)) and
    the disagreement, max − min of the members' labels."""
    return {"members": {name: {"prob_a_better": round(m["label_prob"], 6), "p_first_better_ab": round(m["p_ab"], 6),
                               "p_first_better_ba": round(m["p_ba"], 6), "consistent": m["consistent"]}
                        for name, m in (v.members or {}).items()},
            "disagreement": round(v.disagreement or 0.0, 6)}


def row_members(judge: dict) -> dict | None:
    """A row's panel members back in the verdict's names (for `member_figures`)."""
    members = judge.get("members")
    if not members:
        return None
    return {name: {"label_prob": m["prob_a_better"], "p_ab": m["p_first_better_ab"], "p_ba": m["p_first_better_ba"],
                   "consistent": m["consistent"]} for name, m in members.items()}


def summarise(rows: list[dict], dropped: list[dict], extra: dict) -> dict:
    """Step 6: figures over every judged pair (kept and dropped), so they hold across resumes."""
    js = [r["judge"] for r in rows + dropped]
    n = len(js)
    decided = [f for j in js for f in (j["first_position_ab"], j["first_position_ba"]) if f is not None]
    return {
        "pairs_judged": n, "pairs_written": len(rows), "pairs_dropped": len(dropped),
        "position_consistency_rate": sum(j["consistent"] for j in js) / n if n else None,
        "first_position_rate": sum(decided) / len(decided) if decided else None,
        "tie_rate": sum(abs(j["prob_a_better"] - 0.5) < 1e-9 for j in js) / n if n else None,
        "parse_failures": sum(j["parse_failures"] for j in js),
        "judge_tokens": sum(j["tokens"] for j in js),
        "cost_usd": round(sum(j.get("cost_usd", 0.0) for j in js), 6),
        "judge_time_s": round(sum(j["latency_s"] for j in js), 3),
        **member_figures([row_members(j) for j in js], [j["prob_a_better"] for j in js]),
        **extra,
    }


def train(run: RunConfig, cfg: LabelConfig, resolved_config: dict | None = None,
          judge: PairwiseJudge | None = None) -> Path:
    """Label pairs; returns the preference JSONL. `judge` overrides cfg.judge (tests, programmatic use)."""
    t_start = time.time()
    out, device = setup_run(run)
    amp = autocast_for(device, run.precision)
    output = Path(cfg.output) if cfg.output else out / "preferences.jsonl"
    dropped_path = out / "dropped.jsonl"
    output.parent.mkdir(parents=True, exist_ok=True)
    if run.resume == "never":
        for p in (output, dropped_path):
            p.unlink(missing_ok=True)
    prompts = load_prompts(cfg.prompts)
    if cfg.max_prompts:
        prompts = prompts[:cfg.max_prompts]
    rows, dropped = read_done(output), read_done(dropped_path)
    done = {r["id"] for r in rows} | {r["id"] for r in dropped}
    if done:
        log.info("resuming: %d pairs already judged", len(done))
    pairs_of = pair_indices(cfg.responses_per_prompt, cfg.pairing)
    todo = [p for p in prompts if any(pair_id(p.id, i, j) not in done for i, j in pairs_of)]
    judge = judge or make_judge(cfg.judge, device=device, autocast=amp, key="label.judge")
    meta = judge.metadata()
    n_new = n_identical = n_failed = n_errors = 0
    model = tokenizer = None
    cost_this_run = 0.0
    error_examples: list[str] = []
    todo_ids = {p.id for p in todo}
    chunks = [prompts[s:s + cfg.prompts_per_batch] for s in range(0, len(prompts), cfg.prompts_per_batch)]
    chunks = [c for c in chunks if any(p.id in todo_ids for p in c)]
    n_trunc = 0
    if todo:
        tokenizer = load_tokenizer(cfg.policy, padding_side="left")
        model = load_causal_lm(cfg.policy, device=device).eval().requires_grad_(False)
    bar = tqdm(total=len(todo), desc="label", disable=not run.progress)
    for chunk in chunks:
        # 1.-2. answers reproducible from (seed, chunk)
        chunk_answers, cut = sample_answers(model, tokenizer, chunk, cfg, run.seed, device, amp)
        n_trunc += cut
        for row, answers in zip(chunk, chunk_answers):
            if row.id not in todo_ids:
                continue
            bar.update(1)
            # 3. pairs not yet judged, identical texts left out
            pending = []
            for i, j in pairs_of:
                if pair_id(row.id, i, j) in done:
                    continue
                if answers[i] == answers[j]:
                    n_identical += 1
                    continue
                pending.append((i, j))
            if not pending:
                continue
            # 4. both orders, debiased
            ref = row.reference if cfg.use_references else None
            verdicts = judge_pairs_both_orders(judge, [row.text] * len(pending), [answers[i] for i, _ in pending],
                                               [answers[j] for _, j in pending], [ref] * len(pending),
                                               on_error="keep")
            # 5. append row by row (flushed and fsynced); a failed judge call leaves its pair for a rerun
            for (i, j), v in zip(pending, verdicts):
                cost_this_run += v.cost_usd
                if v.errors:
                    n_failed, n_errors = n_failed + 1, n_errors + v.errors
                    if v.error and v.error not in error_examples and len(error_examples) < 3:
                        error_examples.append(v.error)
                    continue
                pref = preference_row(row, i, j, answers[i], answers[j], v, meta)
                if v.consistent or cfg.inconsistent == "soft":
                    append_jsonl(output, pref)
                    rows.append(pref)
                else:
                    append_jsonl(dropped_path, pref)
                    dropped.append(pref)
                n_new += 1
    bar.close()
    if n_trunc:
        log.warning("%d prompts were longer than label.max_prompt_tokens=%d and lost tokens on the left", n_trunc,
                    cfg.max_prompt_tokens)
    # 6. summary
    stats = getattr(judge, "stats", None)
    summary = summarise(rows, dropped, {
        "pairs_judged_this_run": n_new, "identical_pairs_skipped_this_run": n_identical,
        "prompts_truncated_this_run": n_trunc,
        "pairs_failed_this_run": n_failed, "judge_call_failures_this_run": n_errors,
        "judge_errors": error_examples, "cost_usd_this_run": round(cost_this_run, 6),
        **({"judge_calls_this_run": stats()} if callable(stats) else {}),
        "wall_time_this_run_s": round(time.time() - t_start, 3), "output": str(output), "judge": meta,
    })
    save_json(out / "label_summary.json", summary)
    if n_failed:
        log.warning("%d pairs were not labelled: %d judge calls failed past their retries (first: %s); they are "
                    "not written, rerun the same command to judge them again", n_failed, n_errors,
                    error_examples[0] if error_examples else "?")
    log.info("labelled %d pairs (%d this run): consistency %s, first-position rate %s, ties %s, parse failures %d",
             summary["pairs_judged"], n_new, _fmt(summary["position_consistency_rate"]),
             _fmt(summary["first_position_rate"]), _fmt(summary["tie_rate"]), summary["parse_failures"])
    for name, fig in (summary.get("members") or {}).items():
        log.info("  panel member %s: consistency %s, agrees with the panel on %s", name,
                 _fmt(fig["consistency_rate"]), _fmt(fig["agreement_with_panel"]))
    if summary.get("members"):
        log.info("  panel: unanimous on %s of pairs, mean disagreement %s", _fmt(summary["panel_agreement"]),
                 _fmt(summary["mean_disagreement"]))
    return output


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


__all__ = ["LabelConfig", "train", "prompt_seed", "pair_indices", "pair_id", "summarise"]
