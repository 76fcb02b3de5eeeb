"""Fixed PPO workload on the real SmolLM2-135M-Instruct; prints one JSON line.

Workload (the PPO issue's): 8 prompts x 48 new tokens (EOS suppressed so every iteration generates the same
number of tokens), 1 PPO epoch, micro-batch 4 x accumulation 2, fp32, 4 iterations, a Python reward.
Run on an idle machine: the load average is printed so a busy run can be spotted.
`--lora R` trains rank-R LoRA adapters with the reference = the policy with adapters disabled (no second copy);
`--gradient-checkpointing` recomputes activations in the backward pass. Compare peak RSS against a plain run.

    .venv/bin/python bench/ppo_throughput.py [--iterations 4] [--threads 2] [--lora 16]
        [--gradient-checkpointing] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lora", type=int, default=0, metavar="R", help="LoRA rank (0 = full fine-tuning)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="run.precision: bf16 = bf16 autocast, fp32 master weights (CPUs with native bf16)")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()

    import torch

    from rlaif.cli import quiet_libraries
    from rlaif.config import load_config
    from rlaif.configs import RootConfig
    from rlaif.metrics import read_metrics
    from rlaif.models.loading import resolve_model
    from rlaif.stages import ppo

    quiet_libraries()
    resolve_model("smollm2-135m-instruct")  # conversion (first run only) is not part of the workload
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(RootConfig, None, [
            f"run.output_dir={out}", "run.progress=false", f"run.threads={a.threads}", "run.resume=never",
            f"run.precision={a.precision}",
            "ppo.policy=smollm2-135m-instruct", "ppo.prompts=builtin:demo-train",
            "ppo.reward.function=rlaif.rewards.examples:about_20_words",
            f"ppo.iterations={a.iterations}", "ppo.batch_size=8", "ppo.micro_batch_size=4",
            "ppo.gradient_accumulation_steps=2", "ppo.forward_batch_size=8", "ppo.ppo_epochs=1",
            "ppo.generation.max_new_tokens=48", "ppo.generation.min_new_tokens=48", "ppo.checkpoint_every=0",
            f"ppo.lora.r={a.lora}", f"ppo.gradient_checkpointing={str(a.gradient_checkpointing).lower()}",
            *a.overrides,
        ])
        t0 = time.perf_counter()
        ppo.train(cfg.run, cfg.ppo)
        wall = time.perf_counter() - t0
        rows = read_metrics(out)
    s_iter = [r["s_iteration"] for r in rows]
    tokens = sum(r["tokens"] for r in rows)
    steady = rows[1:] or rows
    print(json.dumps({
        "system": "rlaif",
        "workload": f"smollm2-135m ppo 8x48 new tokens, 1 epoch, {a.precision}",
        "precision": a.precision,
        "reward": {"model": cfg.ppo.reward.model, "function": cfg.ppo.reward.function,
                   "missing_eos": cfg.ppo.missing_eos},
        "lora_r": a.lora,
        "gradient_checkpointing": a.gradient_checkpointing,
        "iterations": len(rows),
        "s_per_iteration": sum(s_iter) / len(s_iter),
        "s_per_iteration_steady": sum(r["s_iteration"] for r in steady) / len(steady),
        "tokens_per_s": tokens / sum(s_iter),
        "s_generate": sum(r["s_generate"] for r in rows) / len(rows),
        "s_score": sum(r["s_score"] for r in rows) / len(rows),
        "s_update": sum(r["s_update"] for r in rows) / len(rows),
        "wall_s_incl_loading": wall,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(),
        "loadavg_before": load_before[0],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cpu",
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
