"""Does the embedded default align on every seed? `rlaif demo` with run.seed 0, 1, 2, each in a fresh folder.

    python bench/demo_seeds.py                               # PPO (the demo's algorithm), seeds 0 1 2
    python bench/demo_seeds.py --algorithm grpo --algorithm dpo  # then GRPO and DPO in the same seed folders
    python bench/demo_seeds.py --seeds 0 --root runs/demo-seeds KEY=VALUE ...   # extra config overrides

Each seed runs the whole `rlaif demo` (sft -> audit -> label -> rm -> align -> eval -> report) in
`<root>/seed-<s>`. A later algorithm in the same invocation (or a later invocation with the same --root) runs in
the same folder with `pipeline.algorithm=<algo>`: the pipeline skips the finished sft/label/rm stages, so every
algorithm of a seed starts from the same SFT policy, labels and reward model, and writes `<algo>/` and
`eval-<algo>/` (PPO: `ppo/`, `eval/`). Folders are wiped first unless --keep is given.

Prints one JSON line per (algorithm, seed): held-out win-rate against the SFT policy with its 95 % CI, W/T/L, the
reward-model score of SFT and of the aligned policy, KL, length, EOS rate, minutes per stage and the whole command;
then one summary line per algorithm: mean, worst seed, and whether every seed met the goal (win-rate >= 0.60, CI
low > 0.5, RM score above SFT's; for the demo's algorithm also the whole command <= 15 minutes). The machine,
CPU flags, date and commit are in every summary line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = {"win_rate": 0.60, "ci_low": 0.5, "minutes": 15.0}


def machine() -> dict:
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                     platform.processor())
        flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    except OSError:
        model = platform.processor()
    native_bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f" {f}" in flags]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True)
    return {"cpu": model, "cores": os.cpu_count(), "native_bf16": native_bf16,
            "commit": commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else ""),
            "date": datetime.date.today().isoformat()}


def read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def seed_row(folder: Path, algo: str, seed: int, minutes: float, rc: int) -> dict:
    eval_dir = folder / ("eval" if algo == "ppo" else f"eval-{algo}")
    ev = read(eval_dir / "eval.json")
    timings = read(folder / "timings.json") or {}
    row: dict = {"algorithm": algo, "seed": seed, "rc": rc, "minutes_command": round(minutes, 2),
                 "minutes_stages": {k: round(v / 60, 2) for k, v in timings.items()}}
    if ev is None:
        return {**row, "error": f"no {eval_dir}/eval.json"}
    p, b = ev["policy_stats"], ev["baseline_stats"]
    lo, hi = ev["win_rate_ci"]
    row.update({
        "win_rate": round(ev["win_rate"], 3), "ci": [round(lo, 3), round(hi, 3)],
        "wtl": [ev["wins"], ev["ties"], ev["losses"]], "pairs": ev["pairs"],
        "rm_sft": _r(b.get("reward_mean")), "rm_policy": _r(p.get("reward_mean")),
        "kl": _r(p.get("kl_mean")), "length_sft": _r(b["length_mean"], 1), "length_policy": _r(p["length_mean"], 1),
        "eos_sft": _r(b["eos_rate"], 2), "eos_policy": _r(p["eos_rate"], 2),
        "warnings": len(ev.get("warnings", [])),
    })
    rm_up = row["rm_policy"] is not None and row["rm_sft"] is not None and row["rm_policy"] > row["rm_sft"]
    row["goal_met"] = bool(rc == 0 and row["win_rate"] >= GOAL["win_rate"] and lo > GOAL["ci_low"] and rm_up)
    return row


def _r(x, digits: int = 3):
    return None if x is None else round(float(x), digits)


def run_seed(root: Path, algo: str, seed: int, overrides: list[str], log_dir: Path) -> tuple[float, int]:
    folder = root / f"seed-{seed}"
    cmd = [sys.executable, "-m", "rlaif.cli", "demo", f"run.output_dir={folder}", f"run.seed={seed}",
           f"pipeline.algorithm={algo}", "run.progress=false", *overrides]
    t0 = time.monotonic()
    with open(log_dir / f"{algo}-seed-{seed}.log", "w") as logf:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT).returncode
    return (time.monotonic() - t0) / 60, rc


def summary(rows: list[dict], algo: str, demo_algo: bool, info: dict) -> dict:
    ok = [r for r in rows if "win_rate" in r]
    worst = min(ok, key=lambda r: r["win_rate"]) if ok else None
    out = {"summary": algo, "seeds": [r["seed"] for r in rows], **info,
           "win_rate_mean": round(statistics.mean(r["win_rate"] for r in ok), 3) if ok else None,
           "win_rate_sd": round(statistics.stdev(r["win_rate"] for r in ok), 3) if len(ok) > 1 else None,
           "worst_seed": worst and {k: worst[k] for k in ("seed", "win_rate", "ci", "rm_sft", "rm_policy")},
           "rm_up_every_seed": bool(ok) and all(  # None where the run had no reward model (pipeline.stages)
               r["rm_policy"] is not None and r["rm_sft"] is not None and r["rm_policy"] > r["rm_sft"] for r in ok),
           "every_seed_goal": bool(ok) and len(ok) == len(rows) and all(r["goal_met"] for r in ok)}
    if demo_algo:
        out["max_minutes_command"] = max(r["minutes_command"] for r in rows)
        out["every_seed_within_15_min"] = all(r["minutes_command"] <= GOAL["minutes"] for r in rows)
        out["every_seed_goal"] = out["every_seed_goal"] and out["every_seed_within_15_min"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--algorithm", action="append", choices=["ppo", "grpo", "dpo"],
                    help="repeatable; default ppo (the demo's); the first one of a fresh root runs every stage")
    ap.add_argument("--root", type=Path, default=ROOT / "runs" / "demo-seeds")
    ap.add_argument("--keep", action="store_true", help="keep existing seed folders (finished stages are skipped)")
    ap.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE for every run")
    args = ap.parse_args(argv)
    algos = args.algorithm or ["ppo"]
    args.root.mkdir(parents=True, exist_ok=True)
    log_dir = args.root / "logs"
    log_dir.mkdir(exist_ok=True)
    if not args.keep:
        for s in args.seeds:
            shutil.rmtree(args.root / f"seed-{s}", ignore_errors=True)
    info = machine()
    all_rows = []
    for algo in algos:
        rows = []
        for s in args.seeds:
            minutes, rc = run_seed(args.root, algo, s, args.overrides, log_dir)
            row = seed_row(args.root / f"seed-{s}", algo, s, minutes, rc)
            rows.append(row)
            print(json.dumps(row), flush=True)
        line = summary(rows, algo, algo == "ppo", info)
        line["peak_rss_gib_any_command"] = round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 2)
        print(json.dumps(line), flush=True)
        all_rows.extend(rows)
    with open(args.root / "results.jsonl", "a") as f:
        for r in all_rows:
            f.write(json.dumps({**r, **info}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
