"""Iterative (online) RLAIF: `pipeline.rounds: N` runs N−1 more rounds after the pipeline's first.

Round r (2..N) lives in `<run>/round-<r>/` and, with the previous round's aligned policy P and reward model R:
1) label: P writes new answers to the label prompts, the judge labels them (round-<r>/label/preferences.jsonl);
2) shift: R scores the new on-policy pairs; its accuracy there against its held-out accuracy on the labels it was
   trained on is the distribution-shift signal (round-<r>/rm_shift.json);
3) rm: trained on every round's labels so far (ids prefixed `r<k>/`, round-<r>/label/all_preferences.jsonl),
   from `rm.model` (pipeline.rm_update=retrain) or from R (continue);
4) align: from P, against the new RM (ppo, grpo) or on all labels (dpo); the KL reference stays the SFT policy
   (pipeline.reference=fixed) or moves to P (previous);
5) eval: against the SFT policy (round-<r>/eval*/) and against P (round-<r>/eval-prev/).
Each stage leaves STAGE_DONE.json, so a rerun resumes in the round and stage where it stopped. `rounds.json` at
the top of the run folder has one line per round (win-rates with CIs, RM accuracy on new vs old labels), which
the report shows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from .checkpoint import save_json

log = logging.getLogger("rlaif.rounds")
DONE = "STAGE_DONE.json"


def round_dir(root: Path, r: int) -> Path:
    return root if r == 1 else root / f"round-{r}"


def policy_of(root: Path, r: int, algo: str) -> Path:
    return round_dir(root, r) / algo / "policy"


def rm_of(root: Path, r: int) -> Path:
    return round_dir(root, r) / "rm" / "model"


def eval_folder(algo: str) -> str:
    return "eval" if algo == "ppo" else f"eval-{algo}"


def merge_labels(root: Path, r: int, out: Path) -> int:
    """Every round's label rows so far in one file, ids prefixed with their round (`r2/p7:0-1`)."""
    n = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for k in range(1, r + 1):
            path = round_dir(root, k) / "label" / "preferences.jsonl"
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    row["id"] = f"r{k}/{row.get('id', n)}"
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n += 1
    tmp.replace(out)
    return n


def rm_shift(previous_rm: Path, labels: Path, device: str = "cpu") -> dict[str, Any]:
    """Step 2: the previous reward model's pairwise accuracy on the new on-policy labels, and its held-out
    accuracy on the labels it was trained on (from its summary)."""
    from .data.preferences import load_preferences
    from .rewards.sources import ModelReward

    rows = load_preferences(labels)
    reward = ModelReward(str(previous_rm), device=device)
    chosen = reward([r.prompt for r in rows], [r.chosen for r in rows])
    rejected = reward([r.prompt for r in rows], [r.rejected for r in rows])
    decided = [(c, j) for c, j, r in zip(chosen.tolist(), rejected.tolist(), rows)
               if r.label_prob is None or abs(r.label_prob - 0.5) > 1e-9]
    summary_path = previous_rm.parent / "summary.json"
    old = json.loads(summary_path.read_text()).get("eval") if summary_path.exists() else None
    return {"previous_rm": str(previous_rm), "pairs_new": len(decided),
            "accuracy_new_labels": sum(c > j for c, j in decided) / len(decided) if decided else None,
            "accuracy_old_heldout": (old or {}).get("accuracy")}


def round_config(cfg, root: Path, r: int):
    """The root config of round r: every stage pointed at the previous round's outputs."""
    rep = dataclasses.replace
    algo, here = cfg.pipeline.algorithm, round_dir(root, r)
    prev_policy, sft_policy = str(policy_of(root, r - 1, algo)), cfg.eval.baseline
    all_labels = str(here / "label" / "all_preferences.jsonl")
    reference = sft_policy if cfg.pipeline.reference == "fixed" else None  # None: the starting policy (P)
    rm_model = str(rm_of(root, r - 1)) if cfg.pipeline.rm_update == "continue" else cfg.rm.model
    new_rm = str(here / "rm" / "model")
    return rep(
        cfg, run=rep(cfg.run, output_dir=str(here)),
        label=rep(cfg.label, policy=prev_policy, output=""),
        rm=rep(cfg.rm, data=all_labels, model=rm_model),
        ppo=rep(cfg.ppo, policy=prev_policy, reference=reference, reward=rep(cfg.ppo.reward, model=[new_rm])),
        grpo=rep(cfg.grpo, policy=prev_policy, reference=reference, reward=rep(cfg.grpo.reward, model=[new_rm])),
        dpo=rep(cfg.dpo, policy=prev_policy, reference=reference, data=all_labels),
        eval=rep(cfg.eval, policy=str(policy_of(root, r, algo)), baseline=sft_policy,
                 reward_models=[new_rm] if cfg.eval.reward_models else []))


def run_rounds(cfg, root: Path, run_stage) -> list[dict[str, Any]]:
    """Rounds 2..N (round 1 is the pipeline that just ran); returns and writes rounds.json. `run_stage` is the
    pipeline's (passed in, so this module does not import the pipeline that calls it)."""
    algo = cfg.pipeline.algorithm
    for r in range(2, cfg.pipeline.rounds + 1):
        here = round_dir(root, r)
        here.mkdir(parents=True, exist_ok=True)
        rc = round_config(cfg, root, r)
        timings = json.loads((here / "timings.json").read_text()) if (here / "timings.json").exists() else {}
        with_rm = algo != "dpo"  # dpo aligns on the labels themselves
        steps = [("label", "label", rc), *([("shift", "rm_shift", rc), ("rm", "rm", rc)] if with_rm else []),
                 ("align", algo, rc), ("eval", eval_folder(algo), rc),
                 ("eval", "eval-prev", dataclasses.replace(rc, eval=dataclasses.replace(
                     rc.eval, baseline=str(policy_of(root, r - 1, algo)))))]
        for stage, folder, stage_cfg in steps:
            done = here / folder / DONE
            if done.exists():
                continue
            log.info("round %d: %s -> %s", r, stage, here / folder)
            t0 = time.time()
            (here / folder).mkdir(parents=True, exist_ok=True)
            if stage == "shift":
                from .runtime import pick_device

                info = rm_shift(rm_of(root, r - 1), here / "label" / "preferences.jsonl",
                                str(pick_device(cfg.run.device)))
                save_json(here / "rm_shift.json", info)
            else:
                if stage == "rm" or (stage == "align" and algo == "dpo"):
                    merge_labels(root, r, here / "label" / "all_preferences.jsonl")
                info = run_stage(stage, stage_cfg, here, folder)
            info.update(stage=stage, round=r, seconds=round(time.time() - t0, 1))
            save_json(done, info)
            timings[folder] = info["seconds"]
            save_json(here / "timings.json", timings)
    table = rounds_table(root, cfg.pipeline.rounds, algo)
    save_json(root / "rounds.json", {"rounds": table, "rm_update": cfg.pipeline.rm_update,
                                     "reference": cfg.pipeline.reference})
    return table


def rounds_table(root: Path, n: int, algo: str) -> list[dict[str, Any]]:
    """One line per round: win-rate vs SFT and vs the previous round (with CIs), RM accuracy new vs old."""
    def read(path: Path) -> dict:
        return json.loads(path.read_text()) if path.exists() else {}

    out = []
    for r in range(1, n + 1):
        here = round_dir(root, r)
        ev, prev, shift = read(here / eval_folder(algo) / "eval.json"), read(here / "eval-prev" / "eval.json"), \
            read(here / "rm_shift.json")
        rm = read(here / "rm" / "summary.json").get("eval") or {}
        out.append({"round": r, "win_rate_vs_sft": ev.get("win_rate"), "ci_vs_sft": ev.get("win_rate_ci"),
                    "win_rate_vs_previous": prev.get("win_rate") if r > 1 else None,
                    "ci_vs_previous": prev.get("win_rate_ci") if r > 1 else None,
                    "rm_heldout_accuracy": rm.get("accuracy"),
                    "previous_rm_accuracy_new_labels": shift.get("accuracy_new_labels"),
                    "previous_rm_accuracy_old_labels": shift.get("accuracy_old_heldout")})
    return out


__all__ = ["run_rounds", "round_config", "rounds_table", "merge_labels", "rm_shift"]
