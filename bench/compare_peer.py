"""Same-run comparison of rlaif's PPO with the peer, TRL 1.12.0's PPOTrainer, on the fixed PPO workload.

What is measured: bench/ppo_throughput.py (rlaif) and bench/peer_trl_ppo.py (TRL, in its own venv) run the
same workload — SmolLM2-135M-Instruct, 8 prompts x exactly 48 new tokens per iteration, 1 PPO epoch,
micro-batch 4 x accumulation 2, fp32 (or both bf16 autocast with --precision bf16), the same torch thread count — one after the other, each in a fresh
process. Both use the same reward: a SmolLM2-135M sequence classifier (the policy's weights + a scalar head
drawn with a fixed seed) saved once under bench/out/peer-compare/shared-rm; rlaif gets it as
`ppo.reward.model=[<folder>]` (its default Python reward is switched off, and `ppo.missing_eos=keep` so the RM
score is the score, as in TRL without missing_eos_penalty: no response can end with EOS in this workload).
Both critics are the policy backbone + a new zeroed scalar head. Both see the same prompts in the same
iterations (rlaif's seeded prompt order, written to bench/out/peer-compare/prompts.jsonl for the peer).

Output (stdout): the load average before, one JSON line per system (s/iteration, generated tokens/s, peak RSS)
-- rlaif three times: with its defaults (`ppo.critic=shared`, a value head on the policy's backbone, and
`ppo.old_logprobs=sampling`, old log-probs and values taken while sampling, as the peer takes its old log-probs),
with `ppo.old_logprobs=recompute`, and with the separate critic (`ppo.critic=separate`, recomputed) -- then one JSON line of ratios per rlaif variant and whether the goal (rlaif >= 2x the peer's
tokens/s at no more peak memory) is met. Figures are whatever this run measures; run on an idle machine.

    .venv/bin/python bench/compare_peer.py [--iterations 4] [--threads 2] [--precision fp32|bf16]
        [--variants default,shared-recompute,separate] [--rounds 1] [--peer-first]

`--rounds R` runs everything R times with the peer's place alternating (last, first, ... or first, last, ...
with `--peer-first`), prints each round's ratios and, at the end, each variant's ratios with their minimum
and median: a machine's drift and an order effect (a warm page cache, the CPU's clock) show up there.

First use creates bench/.venv-trl (python -m venv; torch==2.13.0 first, then trl/transformers/accelerate/
datasets pinned so torch stays the CPU build; ~1.5 GB); a stamp file makes later runs skip it. Each system's
stderr goes to bench/out/peer-compare/<system>.stderr.log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv-trl"
OUT = BENCH / "out" / "peer-compare"
PINS = ["torch==2.13.0", "trl==1.12.0", "transformers==5.23.0", "accelerate==1.15.0", "datasets==5.2.0"]
RM_SEED = 1234
BATCH = 8  # rollouts per iteration in both workloads
VARIANTS = {  # key: (system name, extra rlaif overrides)
    "default": ("rlaif (the default: shared critic, sampling-time old log-probs)", []),
    "shared-recompute": ("rlaif ppo.old_logprobs=recompute", ["ppo.old_logprobs=recompute"]),
    "separate": ("rlaif ppo.critic=separate ppo.old_logprobs=recompute",
                 ["ppo.critic=separate", "ppo.old_logprobs=recompute"]),
}


def ensure_venv() -> Path:
    """bench/.venv-trl with the pinned peer stack; rebuilt only when the stamp does not match PINS."""
    py = VENV / "bin" / "python"
    stamp = VENV / ".rlaif-bench-stamp"
    if py.is_file() and stamp.is_file() and stamp.read_text().split() == PINS:
        return py
    OUT.mkdir(parents=True, exist_ok=True)
    log = OUT / "venv-trl-install.log"
    print(f"creating {VENV} (once; pip log in {log})", file=sys.stderr)
    with log.open("w") as fh:
        def run(cmd: list[str]) -> None:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            if subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"failed: {' '.join(cmd)} (see {log})")

        run([sys.executable, "-m", "venv", "--clear", str(VENV)])
        pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
        run([*pip, PINS[0]])  # torch first: the CPU wheel, before anything can pull another build
        run([*pip, *PINS])  # torch pinned again so no dependency upgrades it
    check = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m, torch; "
         "print(torch.__version__, any(d.metadata['Name'].startswith('nvidia-') for d in m.distributions()))"],
        capture_output=True, text=True, check=True).stdout.split()
    if check[1] == "True":
        raise SystemExit(f"{VENV}: pip pulled CUDA packages (torch {check[0]}); remove the venv and install the "
                         "CPU wheel of torch==2.13.0 first")
    stamp.write_text("\n".join(PINS) + "\n")
    return py


def prepare_reward_model(policy_dir: str) -> Path:
    """The shared RM: the policy's weights in AutoModelForSequenceClassification(num_labels=1), head drawn with
    RM_SEED (normal, std = initializer_range, zero bias), pad id set; saved once with its tokenizer."""
    folder = OUT / "shared-rm"
    marker = folder / "rlaif-bench-rm.json"
    want = {"source": policy_dir, "seed": RM_SEED}
    if marker.is_file() and json.loads(marker.read_text()) == want and (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoModelForSequenceClassification

    from rlaif.models.loading import load_tokenizer

    tok = load_tokenizer(policy_dir, padding_side="right")
    model = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, dtype=torch.float32)
    gen = torch.Generator().manual_seed(RM_SEED)
    with torch.no_grad():
        head = model.score
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * model.config.initializer_range)
        if head.bias is not None:
            head.bias.zero_()
    model.config.pad_token_id = tok.pad_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    marker.write_text(json.dumps(want))
    return folder


def prepare_prompts(iterations: int) -> Path:
    """rlaif's prompt order for this run (builtin:demo-train, the default seed) as JSONL for the peer, one spare
    batch included."""
    from rlaif.data.prompts import load_prompts
    from rlaif.runtime import RunConfig
    from rlaif.stages.ppo import PromptStream

    rows = PromptStream(load_prompts("builtin:demo-train"), RunConfig().seed).take(BATCH * (iterations + 1))
    path = OUT / "prompts.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({"id": r.id, "messages": r.as_chat()}) + "\n")
    return path


def run_system(name: str, cmd: list[str]) -> dict[str, Any]:
    """Run one benchmark in a fresh process; its last stdout line is its JSON result."""
    log = OUT / f"{name}.stderr.log"
    with log.open("w") as err:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{name} failed (exit {proc.returncode}); stderr tail ({log}):\n{tail}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="both systems: fp32, or bf16 autocast with fp32 master weights (rlaif run.precision=bf16, "
                         "TRL bf16=True); bf16 pays only on a CPU with native bf16 (AVX512-BF16 or AMX)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated rlaif variants, of: {', '.join(VARIANTS)}")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run everything this many times, the peer's place (first / last) alternating")
    ap.add_argument("--peer-first", action="store_true", help="the peer runs first in round 1")
    a = ap.parse_args()
    if unknown := set(a.variants.split(",")) - set(VARIANTS):
        ap.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")

    from rlaif.cli import quiet_libraries
    from rlaif.models.loading import resolve_model
    from rlaif.runtime import cpu_has_native_bf16

    quiet_libraries()
    OUT.mkdir(parents=True, exist_ok=True)
    peer_py = ensure_venv()
    policy_dir = resolve_model("smollm2-135m-instruct")
    rm = prepare_reward_model(policy_dir)
    prompts = prepare_prompts(a.iterations)
    common = ["--iterations", str(a.iterations), "--threads", str(a.threads), "--precision", a.precision]

    print(json.dumps({"loadavg_before": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                      "cpu_native_bf16": cpu_has_native_bf16()}), flush=True)
    chosen = {k: VARIANTS[k] for k in a.variants.split(",")}

    def ours(key: str) -> dict[str, Any]:
        name, extra = chosen[key]
        row = run_system("rlaif", [
            sys.executable, str(BENCH / "ppo_throughput.py"), *common,
            "ppo.reward.function=null", f"ppo.reward.model=[{rm}]", "ppo.missing_eos=keep", *extra,
        ])
        row["system"] = name
        row["reward_note"] = ("the shared RM; rlaif decodes each answer and scores the question/answer chat "
                              "transcript, re-tokenized, at its last token")
        return row

    def peer() -> dict[str, Any]:
        return run_system("trl", [
            str(peer_py), str(BENCH / "peer_trl_ppo.py"), *common,
            "--model", policy_dir, "--reward-model", str(rm), "--prompts", str(prompts),
        ])

    ratios: dict[str, list[float]] = {k: [] for k in chosen}
    for rnd in range(1, a.rounds + 1):
        peer_first = (rnd % 2 == 0) != a.peer_first  # alternate the order from round to round
        rows: dict[str, dict[str, Any]] = {}
        order = ["peer", *chosen] if peer_first else [*chosen, "peer"]
        for key in order:
            row = peer() if key == "peer" else ours(key)
            row["round"] = rnd
            print(json.dumps(row), flush=True)
            rows[key] = row
        p = rows.pop("peer")
        for key, row in rows.items():
            tokens_ratio = row["tokens_per_s"] / p["tokens_per_s"]
            memory_ratio = row["peak_rss_gib"] / p["peak_rss_gib"]
            ratios[key].append(tokens_ratio)
            print(json.dumps({
                "comparison": f"{row['system']} vs {p['system']}",
                "round": rnd,
                "order": "peer first" if peer_first else "peer last",
                "iterations": a.iterations,
                "threads": a.threads,
                "precision": a.precision,
                "tokens_per_s_ours_over_peer": tokens_ratio,
                "s_per_iteration_peer_over_ours": p["s_per_iteration"] / row["s_per_iteration"],
                "s_per_iteration_steady_peer_over_ours": p["s_per_iteration_steady"] / row["s_per_iteration_steady"],
                "peak_rss_ours_over_peer": memory_ratio,
                "goal": "ours >= 2x the peer's tokens/s at no more peak memory",
                "goal_met": tokens_ratio >= 2.0 and memory_ratio <= 1.0,
                "loadavg_after": round(os.getloadavg()[0], 2),
            }), flush=True)
    if a.rounds > 1:
        for key, rs in ratios.items():
            print(json.dumps({"summary": chosen[key][0], "rounds": a.rounds, "tokens_per_s_ratios": rs,
                              "min": min(rs), "median": sorted(rs)[len(rs) // 2]}), flush=True)


if __name__ == "__main__":
    main()
