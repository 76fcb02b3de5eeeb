"""A fixed seed's sft / rm / dpo / ppo / grpo runs on a tiny random model, in 1 and 2 processes, reduced to
their logged figures and a hash of their saved weights: run it before and after a refactor, diff the two files.

    python bench/behaviour_fingerprint.py OUT.json [--work DIR]
    python bench/behaviour_fingerprint.py --compare BEFORE.json AFTER.json    # exit 1 when anything differs

Every figure of every metrics row is kept except wall-clock ones (`s_*` stage timings, `*_per_s`, `seconds`,
`elapsed*`, `time*`, `timestamp`). Two processes go through `accelerate launch` with the shipped config (gloo on the CPU), or its DeepSpeed ZeRO-2/3
configs for the `deepspeed-*` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REWARD = ROOT / "tests" / "stages" / "rewards_for_tests.py"
ACCELERATE = ROOT / "configs" / "accelerate" / "multi-gpu.yaml"
PROMPTS = ["What is the capital of France?", "Name a primary colour.", "How do I boil an egg?",
           "Define photosynthesis.", "Write a two-line poem about rain.", "Why is the sky blue?",
           "Give one tip for sleeping well.", "What is 2 plus 2?"]


def timing_key(key: str) -> bool:
    return (key in {"seconds", "timestamp", "time"} or key.startswith("s_") or key.endswith("_per_s") or key.startswith("elapsed")
            or key.endswith("_seconds") or key.startswith("time_"))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def stage_args(stage: str, model: str, work: Path) -> list[str]:
    from rm_data import toy_pairs

    if stage in ("sft", "rm", "dpo"):
        common = [f"{stage}.micro_batch_size=2", f"{stage}.gradient_accumulation_steps=2",
                  f"{stage}.learning_rate=1e-3", f"{stage}.checkpoint_every=2", f"{stage}.eval_fraction=0.2",
                  f"{stage}.epochs=2"]
        if stage == "sft":
            qa = [("What is 2 plus 2?", "Four."), ("Name a primary colour.", "Red is one."),
                  ("Why is the sky blue?", "Air scatters blue light more than red light."), ("Say hi.", "Hi!")]
            data = write_jsonl(work / "sft.jsonl", [{"prompt": q, "completion": a} for q, a in qa * 3])
            return [f"sft.model={model}", f"sft.data={data}", *common]
        data = write_jsonl(work / "prefs.jsonl", toy_pairs(11, soft=True))
        key = "model" if stage == "rm" else "policy"
        return [f"{stage}.{key}={model}", f"{stage}.data={data}", *common]
    prompts = write_jsonl(work / "prompts.jsonl", [{"id": f"p{i}", "prompt": q} for i, q in enumerate(PROMPTS)])
    common = [f"{stage}.policy={model}", f"{stage}.reward.function={REWARD}:length_reward", f"{stage}.prompts={prompts}",
              f"{stage}.generation.max_new_tokens=6", f"{stage}.iterations=3", f"{stage}.micro_batch_size=2",
              f"{stage}.gradient_accumulation_steps=2", f"{stage}.learning_rate=1e-3", f"{stage}.checkpoint_every=2"]
    if stage == "ppo":
        return [*common, "ppo.batch_size=8", "ppo.samples_per_prompt=2", "ppo.score_baseline=prompt_mean"]
    return [*common, "grpo.prompts_per_iteration=2", "grpo.group_size=4"]


def run(stage: str, processes: int, model: str, work: Path, extra: list[str]) -> dict:
    """`extra`: config overrides, or `deepspeed-zero2` / `deepspeed-zero3` for the shipped DeepSpeed launch."""
    out = work / f"{stage}-{processes}{'-' + '-'.join(e.split('=')[0] for e in extra) if extra else ''}"
    launch_config = ACCELERATE
    for e in [e for e in extra if e.startswith("deepspeed-")]:
        launch_config, extra = ACCELERATE.parent / f"{e}.yaml", [x for x in extra if x != e]
    args = ["-m", "rlaif.cli", stage, f"run.output_dir={out}", "run.progress=false", "run.device=cpu",
            "run.keep_checkpoints=1", *stage_args(stage, model, work), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(launch_config),
               "--num_processes", str(processes), "--main_process_port", str(29500 + os.getpid() % 2000), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    if proc.returncode != 0:
        return {"rc": proc.returncode, "stderr": proc.stderr[-2000:]}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [{k: v for k, v in r.items() if not timing_key(k)} for r in rows]
    weights = {}
    for f in sorted(out.rglob("*.safetensors")):
        if "checkpoint" not in str(f.relative_to(out)):
            weights[str(f.relative_to(out))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return {"rc": 0, "metrics": rows, "weights": weights}


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differ = 0
    for key in sorted(set(a) | set(b)):
        ra, rb = a.get(key, {}), b.get(key, {})
        rows_a = [{k: v for k, v in r.items() if not timing_key(k)} for r in ra.get("metrics", [])]
        rows_b = [{k: v for k, v in r.items() if not timing_key(k)} for r in rb.get("metrics", [])]
        same = ra.get("rc") == rb.get("rc") == 0 and rows_a == rows_b and ra.get("weights") == rb.get("weights")
        differ += not same
        print(f"{key:34s} {'identical' if same else 'DIFFERS'}: {len(rows_a)} metrics rows "
              f"({sum(len(r) for r in rows_a)} figures), {len(ra.get('weights', {}))} weight files")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path, nargs="?")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"))
    args = ap.parse_args()
    if args.compare:
        return compare(*args.compare)
    from conftest import build_tiny_llama

    from rlaif.models.loading import resolve_model

    work = args.work or Path(tempfile.mkdtemp(prefix="fingerprint-"))
    work.mkdir(parents=True, exist_ok=True)
    model = build_tiny_llama(resolve_model("smollm2-135m-instruct"), work / "tiny")
    result = {}
    plan = [("sft", 1, []), ("sft", 2, []), ("rm", 1, []), ("rm", 2, []), ("dpo", 1, []), ("dpo", 2, []),
            ("ppo", 1, []), ("ppo", 2, []), ("ppo", 1, ["ppo.critic=separate", "ppo.old_logprobs=recompute"]), ("ppo", 2, ["run.fsdp=true"]),
            ("grpo", 1, []), ("grpo", 2, []), ("sft", 2, ["run.fsdp=true"]), ("rm", 2, ["run.shard_optimizer=true"]),
            ("sft", 2, ["deepspeed-zero2"]), ("dpo", 2, ["deepspeed-zero3"]), ("ppo", 2, ["deepspeed-zero3"]),
            ("grpo", 2, ["deepspeed-zero2"])]
    for stage, n, extra in plan:
        key = f"{stage} x{n} {' '.join(extra)}".strip()
        result[key] = run(stage, n, model, work, extra)
        print(key, "ok" if result[key]["rc"] == 0 else f"FAILED rc={result[key]['rc']}", flush=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
