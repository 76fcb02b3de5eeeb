"""`rlaif grpo`: critic-free policy optimisation from groups of answers (GRPO, Shao et al. 2024; RLOO, Ahmadian
et al. 2024), sharing PPO's rollout, reward, scoring, update and checkpoint code.

One iteration:
1) take `prompts_per_iteration` prompts and sample `group_size` answers for each (a group's rows contiguous);
2) score every answer with the reward source (a reward model, a callable or a judge — ppo's
   `RewardConfig`) and apply the missing-EOS policy; old and reference log-probs in one no-grad pass;
3) advantages per answer: `group`: (r − group mean) / (group std + eps) (or only centred with
   scale_rewards=false); `rloo`: r − mean of the other G−1 answers; broadcast over the answer's tokens;
4) policy update: PPO's clipped surrogate (`ppo_updates.policy_update`) + kl_coef · k3 KL(π ‖ π_ref) per token
   in the loss (no KL in the reward, no critic); token-level normalisation over each optimizer step's tokens;
5) metrics (raw reward, score after the EOS rule, group spread, KL, length, EOS rate, losses; every
   `validation.every` iterations the held-out validation of stages/validation.py) and a resumable checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed, ops
from ..checkpoint import find_resume_checkpoint, save_checkpoint, torch_load
from ..config import ConfigError
from ..data.prompts import load_prompts
from ..metrics import MetricsLogger
from ..rewards.sources import check_finite, make_reward_source
from ..rollout.generate import sample_responses
from ..runtime import RunConfig, autocast_for, seed_everything, setup_run
from .grpo_config import GRPOConfig
from .iteration_checkpoint import load_iteration_checkpoint, save_iteration_checkpoint
from .ppo_batch import PromptStream, Scored, apply_eos_policy, score_batch
from .ppo_updates import policy_update
from .rl_models import (
    build_optimizers,
    check_data_parallel,
    check_fsdp,
    judge_reward_sources,
    load_policy_and_reference,
    save_policy,
    start_replicas,
)
from .validation import due, log_validation, start_validation, training_prompts

log = logging.getLogger("rlaif.grpo")


def advantages_of(scores: torch.Tensor, mask: torch.Tensor, cfg: GRPOConfig) -> torch.Tensor:
    """Step 3: (b,) scores -> (b, r) per-token advantages (the answer's advantage on each of its tokens)."""
    if cfg.advantage == "rloo":
        adv = ops.rloo_advantages(scores, cfg.group_size)
    else:
        adv = ops.group_advantages(scores, cfg.group_size, normalise_std=cfg.scale_rewards)
    return adv[:, None] * mask


def train(run: RunConfig, cfg: GRPOConfig, resolved_config: dict | None = None) -> Path:
    """Run GRPO / RLOO; returns the folder of the final policy (Hugging Face format)."""
    if not cfg.reward.model and not cfg.reward.function and cfg.reward.judge_mode == "off":
        raise ConfigError("config key 'grpo.reward': set grpo.reward.model, grpo.reward.function or "
                          "grpo.reward.judge_mode")
    out, device = setup_run(run, data_parallel=True, fsdp=True)
    check_data_parallel(cfg.prompts_per_iteration, cfg.gradient_accumulation_steps, "grpo", "prompts_per_iteration")
    fsdp = check_fsdp(run, cfg.lora, "grpo")
    seed_everything(run.seed)
    amp = autocast_for(device, run.precision)
    prompts = training_prompts(load_prompts(cfg.prompts), cfg.validation, "grpo")
    models = load_policy_and_reference(cfg.policy, cfg.reference, device, cfg.lora, cfg.gradient_checkpointing,
                                       fsdp)
    start_replicas(models, run.seed)
    reward_fn = make_reward_source(
        cfg.reward.model, cfg.reward.function, device=device, batch_size=cfg.reward.batch_size,
        max_length=cfg.reward.max_length, input_format=cfg.reward.input_format, combine=cfg.reward.combine,
        std_k=cfg.reward.std_k, autocast=amp(),
        extra=judge_reward_sources(cfg, models, device, amp))  # type: ignore[arg-type]
    opt, _ = build_optimizers(models, cfg, shard_state=run.shard_optimizer)  # type: ignore[arg-type]
    kl_ctl = ops.make_kl_controller(cfg.kl_coef, None, 1)  # fixed beta; kept in checkpoints like PPO's
    metrics = MetricsLogger(out, run.report_to, resolved_config)
    start, position = 0, 0
    ckpt = find_resume_checkpoint(out, run.resume)
    validator = start_validation(cfg, models, reward_fn, out, device, amp, resumed=ckpt is not None)
    if ckpt is not None:
        state = load_iteration_checkpoint(ckpt, models, (opt,), kl_ctl, device, "grpo")
        start, position = state["iteration"], state["prompt_position"]
        log.info("resumed from %s (iteration %d)", ckpt, start)
    metrics.truncate_after(start)
    stream = PromptStream(prompts, run.seed, position)
    shuffle_gen = torch.Generator().manual_seed(run.seed + 1)
    if ckpt is not None and (ckpt / "shuffle_rng.pt").exists():
        shuffle_gen.set_state(torch_load(ckpt / "shuffle_rng.pt"))
    g = cfg.generation
    for it in tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc="grpo",
                   disable=not run.progress or not distributed.is_main(), dynamic_ncols=True):
        t_iter = time.perf_counter()
        try:
            # 1. groups: each prompt G times, contiguous
            rows = [r for r in stream.take(cfg.prompts_per_iteration) for _ in range(cfg.group_size)]
            rows = rows[distributed.shard(len(rows), cfg.group_size)]  # this process's whole groups
            rollout, n_trunc = sample_responses(
                models.policy, models.tokenizer, rows, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                top_p=g.top_p, min_new_tokens=g.min_new_tokens, max_prompt_tokens=g.max_prompt_tokens,
                batch_size=g.batch_size, device=device, autocast=amp())
            # 2. rewards, EOS policy, old and reference log-probs
            raw = check_finite(reward_fn(rollout.prompts, rollout.responses, rows=rows),
                               getattr(reward_fn, "name", "reward"))
            scores, valid = apply_eos_policy(raw, rollout.ended_with_eos, cfg)  # type: ignore[arg-type]
            mask = rollout.response_mask.float()
            logprobs, ref_logprobs, zeros = score_batch(models, rollout, cfg, device, amp)  # type: ignore[arg-type]
            # 3. group-relative advantages
            adv = advantages_of(scores, mask, cfg)
            kl_tok = ops.kl(logprobs, ref_logprobs, "k1") * mask
            sc = Scored(rollout, scores, raw, valid, mask, logprobs, ref_logprobs, zeros, zeros, kl_tok, adv, zeros,
                        None)
            # 4. policy update with the k3 KL term
            stats = policy_update(models, opt, sc, cfg.kl_coef, cfg, device, amp, shuffle_gen,  # type: ignore[arg-type]
                                  iteration=it)
        except FloatingPointError as e:  # NaN/inf: stop; the last good checkpoint stays, no weights saved
            raise FloatingPointError(f"iteration {it + 1}: {e}") from None

        # 5. metrics (over every process's groups) and checkpoint
        gather = distributed.gather_rows
        raw, scores, mask, kl_tok = gather(raw), gather(scores), gather(mask), gather(kl_tok)
        grouped = scores.view(-1, cfg.group_size)
        lengths = mask.sum(1)
        if validator is not None and due(cfg.validation, it + 1, cfg.iterations):  # held-out signal
            t0 = time.perf_counter()
            stats.update(validator.validate(models.policy), s_validate=time.perf_counter() - t0)
        dt = time.perf_counter() - t_iter
        row = metrics.log(it + 1, {
            "reward_mean": raw.mean().item(), "reward_std": raw.std().item(),
            "score_mean": scores.mean().item(),
            "group_std_mean": grouped.std(1).mean().item(),
            "groups_without_signal": (grouped.std(1) == 0).float().mean().item(),
            "kl": kl_tok.sum(1).mean().item(), "response_length": lengths.mean().item(),
            "eos_rate": gather(rollout.ended_with_eos).float().mean().item(),
            "prompts_truncated": int(distributed.all_reduce_floats([n_trunc])[0]),
            "tokens": int(mask.sum()), "s_iteration": dt, **stats,
        })
        log.info("iter %d/%d reward %.3f kl %.3f len %.1f eos %.2f %.1fs", it + 1, cfg.iterations,
                 row["reward_mean"], row["kl"], row["response_length"], row["eos_rate"], dt)
        log_validation(row, it + 1)
        if cfg.checkpoint_every and ((it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations):
            save_iteration_checkpoint(out, it + 1, models, (opt,), kl_ctl, stream.position, shuffle_gen,
                                      run.keep_checkpoints, save_checkpoint)
    metrics.close()
    final = out / "policy"
    save_policy(models, final)
    return final


__all__ = ["GRPOConfig", "train", "advantages_of"]
