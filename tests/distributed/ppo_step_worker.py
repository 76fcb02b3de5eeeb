"""Two PPO iterations on a fixed global batch, in however many processes launched this script.

    python ppo_step_worker.py MODEL_DIR OUT_DIR CRITIC [zero]                     # one process
    accelerate launch --multi_gpu --num_processes 2 ... ppo_step_worker.py MODEL_DIR OUT_DIR CRITIC [zero]

CRITIC: separate | shared (ppo.critic). zero: the optimizers shard their AdamW moments (run.shard_optimizer).

Every process samples the SAME global batch of 8 rollouts (same weights, same seed), keeps its shard, and runs the
stage's own steps: scoring, advantages (whitening over the global batch), the critic and the policy update
(gradients summed over processes). After each iteration it records a fingerprint of its trained parameters;
the main process saves the final weights and the logged statistics. The test compares the 2-process result
with the 1-process one and the processes with each other.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from rlaif import distributed
from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.prompts import PromptRow
from rlaif.rollout.generate import sample_responses
from rlaif.runtime import autocast_for
from rlaif.stages import ppo
from rlaif.stages.ppo_updates import policy_update, value_update

QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "How do I boil an egg?",
             "Define photosynthesis.", "Write a two-line poem about rain.", "Why is the sky blue?",
             "Give one tip for sleeping well.", "What is 2 plus 2?"]


def main(model_dir: str, out_dir: str, critic: str, shard: bool) -> None:
    out = Path(out_dir)
    world = distributed.init_from_env("cpu")
    torch.set_num_threads(1)
    cfg = load_config(RootConfig, None, [
        f"ppo.policy={model_dir}", "ppo.reward.function=unused:unused", "ppo.batch_size=8",
        "ppo.micro_batch_size=2", "ppo.gradient_accumulation_steps=4", "ppo.forward_batch_size=4",
        "ppo.learning_rate=1e-3", "ppo.value_learning_rate=1e-3", "ppo.generation.max_new_tokens=6",
        "ppo.generation.min_new_tokens=6", "ppo.missing_eos=keep", "ppo.whiten_rewards=true", f"ppo.critic={critic}",
    ]).ppo
    ppo.check_data_parallel(cfg.batch_size, cfg.gradient_accumulation_steps, "ppo", "batch_size")
    device = torch.device("cpu")
    torch.manual_seed(0)
    models = ppo.build_models(cfg, device)
    ppo.start_replicas(models, 0)
    opts = ppo.build_optimizers(models, cfg, shard_state=shard)
    critic = models.value if models.value is not None else models.value_head
    rows = [PromptRow(id=f"p{i}", messages=(("user", q),)) for i, q in enumerate(QUESTIONS)]
    mine = distributed.shard(len(rows))
    amp = autocast_for(device, "fp32")
    fingerprints, stats_log = [], []
    for it in range(2):
        # the same global batch in every process: same weights, same seed
        gen_state = torch.get_rng_state()
        torch.manual_seed(100 + it)
        rollout, _ = sample_responses(models.policy, models.tokenizer, rows, max_new_tokens=6, min_new_tokens=6,
                                      temperature=cfg.generation.temperature, device=device)
        torch.set_rng_state(gen_state)
        rollout = rollout.select(list(range(mine.start, mine.stop)))
        scores = torch.tensor([float(len(r)) / 10 for r in rollout.responses])
        mask = rollout.response_mask.float()
        logprobs, ref_logprobs, values = ppo.score_batch(models, rollout, cfg, device, amp)
        adv = ppo.compute_advantages({"scores": scores, "mask": mask, "logprobs": logprobs,
                                      "ref_logprobs": ref_logprobs, "values": values}, cfg, cfg.kl_coef)
        sc = ppo.Scored(rollout, scores, scores, torch.ones(len(rollout), dtype=torch.bool), mask, logprobs,
                        ref_logprobs, values, adv["rewards"], adv["kl"], adv["advantages"], adv["returns"], None)
        shuffle = torch.Generator().manual_seed(7)
        stats = value_update(models, opts[1], sc, cfg, device, amp, shuffle) if models.value is not None else {}
        stats.update(policy_update(models, opts[0], sc, cfg.kl_coef, cfg, device, amp, shuffle))
        whole = ppo.global_view(sc)
        stats["advantage_sum_sq"] = float((whole.advantages ** 2).sum())
        stats["n_rows_here"] = len(rollout)
        local = getattr(opts[0], "optim", opts[0])  # ZeroRedundancyOptimizer: this process's own AdamW
        stats["policy_moments_here"] = len(local.state)
        stats_log.append(stats)
        fingerprints.append([distributed.parameter_fingerprint(m).tolist() for m in (models.policy, critic)])
    (out / f"fingerprints-rank{world.rank}.json").write_text(json.dumps(fingerprints))
    if world.is_main:
        torch.save({"policy": models.policy.state_dict(), "value": critic.state_dict()}, out / "weights.pt")
        (out / "stats.json").write_text(json.dumps(stats_log))
    distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:] == ["zero"])
