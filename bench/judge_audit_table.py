"""The README's judge-audit table: `rlaif judge-audit` on the shipped gold set and bias probes, for each offline judge.

    python bench/judge_audit_table.py [--root runs/audits] [--only NAME ...]

Runs, one after the other, each in `<root>/<name>/` (audit.json there):
- smollm2-ab:       SmolLM2-135M-Instruct read at its next-token probabilities, the A/B pairwise template;
- smollm2-pointwise: the same model, the 1-10 pointwise template;
- embedding-refs:   the embedding judge (MiniLM, reference-guided), the gold rows' reference answers shown;
- embedding-norefs: the same without the reference answers.
Prints one JSON line per judge (figures, thresholds' flags, verdict, seconds), then the markdown table with the date,
the commit and the machine. Figures are whatever this run measures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JUDGES = {  # name: (row label, extra overrides)
    "smollm2-ab": ("SmolLM2-135M-Instruct, A/B pairwise", []),
    "smollm2-pointwise": ("SmolLM2-135M-Instruct, 1–10 pointwise", ["judge_audit.judge.template=pointwise"]),
    "embedding-refs": ("embedding judge (MiniLM), with reference answers", ["judge_audit.judge.backend=embedding"]),
    "embedding-norefs": ("embedding judge, without reference answers",
                         ["judge_audit.judge.backend=embedding", "judge_audit.use_references=false"]),
}


def run_one(root: Path, name: str) -> dict:
    out = root / name
    cmd = [sys.executable, "-m", "rlaif.cli", "judge-audit", f"run.output_dir={out}", "run.progress=false",
           *JUDGES[name][1]]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1",
                                                                     "TRANSFORMERS_OFFLINE": "1"})
    if proc.returncode:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    report = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    biases = report["biases"]

    def bias(key: str) -> float | None:
        return biases[key]["value"] if isinstance(biases.get(key), dict) else None

    def r3(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {"judge": name, "label": JUDGES[name][0], "accuracy": r3(report["accuracy"]),
            "consistency": r3(report["consistency_rate"]),
            "first_position_rate": r3(report["first_position_rate"]), "length_gap": bias("length_gap"),
            "padding_gain": bias("padding_gain"), "self_preference": bias("self_preference"),
            "reliable": report["reliable"], "reasons": report["reasons"],
            "seconds": round(time.monotonic() - t0, 1)}


def table(rows: list[dict]) -> str:
    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}".replace("-", "−")

    lines = ["| judge | accuracy | position consistency | first-position rate | length gap (≤ 0.25) | "
             "padding gain (≤ 0.10) | self-preference (≤ 0.15) | verdict |", "| --- " * 8 + "|"]
    for r in rows:
        verdict = "reliable" if r["reliable"] else "unreliable: " + "; ".join(r["reasons"])
        lines.append(f"| {r['label']} | {f(r['accuracy'])} | {f(r['consistency'])} | {f(r['first_position_rate'])} "
                     f"| {f(r['length_gap'])} | {f(r['padding_gain'])} | {f(r['self_preference'])} | {verdict} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=ROOT / "runs" / "audits")
    ap.add_argument("--only", nargs="*", choices=list(JUDGES), help="these judges only")
    a = ap.parse_args()
    rows = []
    for name in a.only or JUDGES:
        rows.append(run_one(a.root, name))
        print(json.dumps(rows[-1]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout)
    print(f"\n{datetime.date.today().isoformat()}, commit {commit}{' (working tree modified)' if dirty else ''}, "
          f"{platform.machine()} {os.cpu_count()} cores\n")
    print(table(rows))


if __name__ == "__main__":
    main()
