"""Peak memory per process of data-parallel training with and without sharding (ZeRO-1, FSDP, DeepSpeed).

`--stage ppo`: the README's data-parallel command (configs/ppo-about-10-words.yaml on SmolLM2-135M-Instruct,
separate critic, `ppo.micro_batch_size=2 ppo.gradient_accumulation_steps=2`, `--iterations` iterations, no
checkpoints), AdamW moments replicated vs `run.shard_optimizer=true` (ZeRO stage 1) vs `run.fsdp=true` (the
policy sharded, gathered whole while sampling; the separate critic and the reference stay whole) vs DeepSpeed
ZeRO-2 (configs/accelerate/deepspeed-zero2.yaml: the policy and the critic each in an engine).
`--stage sft`: configs/sft-demo.yaml, `--iterations` optimizer steps of 2 x 2 rows, replicated vs
`run.shard_optimizer=true` vs `run.fsdp=true` (FSDP2: weights, gradients and moments sharded) vs DeepSpeed ZeRO-2
and ZeRO-3 (the shipped configs/accelerate/deepspeed-zero{2,3}.yaml).

Each variant runs under `accelerate launch --multi_gpu --num_processes N` (DeepSpeed: `--config_file` of its
shipped config) on this CPU (gloo), under its own
small parent process, which reports the largest peak RSS of any process below it (`RUSAGE_CHILDREN`: the
biggest single process, not the sum). Loading and the final save are included: every process first loads the
whole model, then shards it, and a sharded model's weights are gathered whole (on the CPU) to be saved. For sft
the line also gives `trained_state_gib` of the first process after the last step (its parameters and AdamW
moments, its shards when sharded; from metrics.jsonl). Prints one JSON line per variant. The arithmetic: a trained fp32 parameter costs 4 bytes of weight,
4 of gradient and 8 of AdamW moments; ZeRO-1 divides the 8 by N, FSDP all 16 (plus the layer being gathered).

    .venv/bin/python bench/sharding_memory.py [--stage ppo|sft] [--processes 2] [--iterations 1] [--variants a,b]
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


STAGES = {
    "ppo": (["ppo", "--config", str(REPO / "configs" / "ppo-about-10-words.yaml"), "ppo.micro_batch_size=2",
             "ppo.gradient_accumulation_steps=2", "ppo.checkpoint_every=0", "ppo.critic=separate",
             "ppo.old_logprobs=recompute"], "ppo.iterations",
            {"replicated": [], "shard_optimizer": ["run.shard_optimizer=true"], "fsdp": ["run.fsdp=true"],
             "deepspeed_zero2": []}),
    "sft": (["sft", "--config", str(REPO / "configs" / "sft-demo.yaml"), "sft.micro_batch_size=2",
             "sft.gradient_accumulation_steps=2", "sft.checkpoint_every=0", "sft.eval_every=0"], "sft.max_steps",
            {"replicated": [], "shard_optimizer": ["run.shard_optimizer=true"], "fsdp": ["run.fsdp=true"],
             "deepspeed_zero2": [], "deepspeed_zero3": []}),
}


def launcher(variant: str) -> list[str]:
    """accelerate launch's flags: --multi_gpu (on this CPU: torchrun, gloo), or a shipped DeepSpeed config."""
    if variant.startswith("deepspeed_zero"):
        stage = variant.removeprefix("deepspeed_zero")
        return ["--config_file", str(REPO / "configs" / "accelerate" / f"deepspeed-zero{stage}.yaml")]
    return ["--multi_gpu"]


def run_variant(stage: str, variant: str, processes: int, iterations: int, port: int) -> dict:
    args, length_key, variants = STAGES[stage]
    with tempfile.TemporaryDirectory() as out:
        launch = [sys.executable, "-m", "accelerate.commands.launch", *launcher(variant), "--num_processes",
                  str(processes), "--main_process_port", str(port), "-m", "rlaif.cli", *args, "run.device=cpu",
                  f"run.output_dir={out}", "run.resume=never", "run.progress=false", "run.threads=1",
                  f"{length_key}={iterations}", *variants[variant]]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", PARENT, *launch], capture_output=True, text=True, env=env,
                              cwd=REPO)
        wall = time.perf_counter() - t0
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("maxrss_kib")]
        if not line or line[-1].split()[2] != "0":
            raise SystemExit(f"{stage} {variant} failed:\n{proc.stderr[-3000:]}")
        rss_kib = int(line[-1].split()[1])
        rows = [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        state = [r["trained_state_gib"] for r in rows if "trained_state_gib" in r]
    return {"system": f"rlaif {stage}" + (", separate critic" if stage == "ppo" else ""), "variant": variant,
            "processes": processes, length_key: iterations, "peak_rss_largest_process_gib": rss_kib / 2**20,
            "trained_state_gib_first_process": state[-1] if state else None, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=sorted(STAGES), default="ppo")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=1)
    ap.add_argument("--variants", default="", help="comma-separated subset (the first is the baseline of the "
                    "summary line); default: all of the stage's")
    a = ap.parse_args()
    print(json.dumps({"loadavg_before": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}),
          flush=True)
    rows = []
    for variant in a.variants.split(",") if a.variants else STAGES[a.stage][2]:
        rows.append(run_variant(a.stage, variant, a.processes, a.iterations, 29500 + os.getpid() % 2000))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["peak_rss_largest_process_gib"]
    print(json.dumps({r["variant"]: {"saved_per_process_gib": base - r["peak_rss_largest_process_gib"],
                                     "over_replicated": r["peak_rss_largest_process_gib"] / base}
                      for r in rows[1:]}), flush=True)


if __name__ == "__main__":
    main()
