"""Peak memory per process of data-parallel PPO with and without `run.shard_optimizer` (ZeRO stage 1).

Runs the README's data-parallel command (configs/ppo-about-10-words.yaml on SmolLM2-135M-Instruct, separate
critic, `ppo.micro_batch_size=2 ppo.gradient_accumulation_steps=2`, `--iterations` iterations, no checkpoints)
under `accelerate launch --multi_gpu --num_processes N` on this CPU (gloo), once with replicated AdamW moments
and once sharded. Each variant runs under its own small parent process, which reports the largest peak RSS of
any process below it (`RUSAGE_CHILDREN`: the biggest single process, not the sum). Prints one JSON line per
variant, then one with the saving. Expectation from the arithmetic: the policy's and the critic's AdamW moments
are 8 bytes per parameter each (2 x 135M x 8 B = 2.2 GB per process), of which a process keeps about 1/N when
sharded.

    .venv/bin/python bench/zero_memory.py [--processes 2] [--iterations 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARENT = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
          "print('maxrss_kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)")


def run_variant(shard: bool, processes: int, iterations: int, port: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(processes), "--main_process_port", str(port), "-m", "rlaif.cli", "ppo", "--config",
                  str(REPO / "configs" / "ppo-about-10-words.yaml"), "run.device=cpu", f"run.output_dir={out}",
                  "run.resume=never", "run.progress=false", "run.threads=1", "ppo.micro_batch_size=2",
                  "ppo.gradient_accumulation_steps=2", f"ppo.iterations={iterations}", "ppo.checkpoint_every=0",
                  f"run.shard_optimizer={str(shard).lower()}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PARENT, *launch], capture_output=True, text=True, env=env,
                              cwd=REPO)
        wall = time.perf_counter() - t0
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("maxrss_kib")]
        if not line or line[-1].split()[2] != "0":
            raise SystemExit(f"shard_optimizer={shard} failed:\n{proc.stderr[-3000:]}")
        rss_kib = int(line[-1].split()[1])
    return {"system": "rlaif ppo, separate critic", "processes": processes, "shard_optimizer": shard,
            "iterations": iterations, "peak_rss_largest_process_gib": rss_kib / 2**20, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=1)
    a = ap.parse_args()
    print(json.dumps({"loadavg_before": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}),
          flush=True)
    rows = []
    for shard in (False, True):
        rows.append(run_variant(shard, a.processes, a.iterations, 29500 + os.getpid() % 2000))
        print(json.dumps(rows[-1]), flush=True)
    saved = rows[0]["peak_rss_largest_process_gib"] - rows[1]["peak_rss_largest_process_gib"]
    print(json.dumps({"saved_per_process_gib": saved,
                      "sharded_over_replicated": rows[1]["peak_rss_largest_process_gib"]
                      / rows[0]["peak_rss_largest_process_gib"]}), flush=True)


if __name__ == "__main__":
    main()
