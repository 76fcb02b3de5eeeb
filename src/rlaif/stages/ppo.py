"""PPO with a frozen reference, a separate critic and a KL penalty (Ziegler et al. 2019; Ouyang et al. 2022).

Each iteration: A) rollouts without gradients — sample, score, log-probs of policy and reference, values;
B) value update; C) policy update (the seed's order), each over `ppo_epochs` x minibatches with gradient
accumulation, gradient clipping and AdamW. Losses are divided by the minibatch's token count, so micro-batch
1 x accumulation 4 gives the same update as 4 x 1.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed, ops
from ..checkpoint import find_resume_checkpoint, save_checkpoint, torch_load
from ..data.prompts import load_prompts
from ..metrics import MetricsLogger
from ..rewards.sources import EnsembleReward, check_finite, make_reward_source
from ..rollout.generate import sample_responses
from ..runtime import RunConfig, autocast_for, seed_everything, setup_run
from .iteration_checkpoint import load_iteration_checkpoint, save_iteration_checkpoint
from .ppo_batch import (
    PromptStream,
    Scored,
    apply_eos_policy,
    compute_advantages,
    global_view,
    iteration_metrics,
    score_batch,
)
from .ppo_config import GenerationConfig, PPOConfig, RewardConfig
from .ppo_updates import policy_update, value_update
from .rl_models import (
    Models,
    build_models,
    build_optimizers,
    check_data_parallel,
    check_fsdp,
    check_reward_source,
    judge_reward_sources,
    load_policy_and_reference,
    save_policy,
    start_replicas,
)
from .validation import due, log_validation, start_validation, training_prompts

log = logging.getLogger("rlaif.ppo")


def train(run: RunConfig, cfg: PPOConfig, resolved_config: dict | None = None) -> Path:
    """Run PPO; returns the folder of the final policy (Hugging Face format)."""
    check_reward_source(cfg)
    out, device = setup_run(run, data_parallel=True, fsdp=True)
    check_data_parallel(cfg.batch_size // cfg.samples_per_prompt, cfg.gradient_accumulation_steps, "ppo",
                        "batch_size")
    fsdp = check_fsdp(run, cfg.lora, "ppo")
    seed_everything(run.seed)
    amp = autocast_for(device, run.precision)
    # bad input fails before minutes of model loading; validation prompts are never trained on
    prompts = training_prompts(load_prompts(cfg.prompts), cfg.validation, "ppo")
    models = build_models(cfg, device, fsdp)
    start_replicas(models, run.seed)
    reward_fn = make_reward_source(
        cfg.reward.model, cfg.reward.function, device=device, batch_size=cfg.reward.batch_size,
        max_length=cfg.reward.max_length, input_format=cfg.reward.input_format, combine=cfg.reward.combine,
        std_k=cfg.reward.std_k, autocast=amp(),
        extra=(judge_sources := judge_reward_sources(cfg, models, device, amp)),
    )
    opt_policy, opt_value = build_optimizers(models, cfg, shard_state=run.shard_optimizer)
    kl_ctl = ops.make_kl_controller(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    metrics = MetricsLogger(out, run.report_to, resolved_config)
    start, position = 0, 0
    ckpt = find_resume_checkpoint(out, run.resume)
    validator = start_validation(cfg, models, reward_fn, out, device, amp, resumed=ckpt is not None)
    if ckpt is not None:
        state = load_iteration_checkpoint(ckpt, models, (opt_policy, opt_value), kl_ctl, device)
        start, position = state["iteration"], state["prompt_position"]
        log.info("resumed from %s (iteration %d)", ckpt, start)
    metrics.truncate_after(start)  # a fresh run in a used folder, or a resume: each iteration logged once
    stream = PromptStream(prompts, run.seed, position)
    shuffle_gen = torch.Generator().manual_seed(run.seed + 1)
    if ckpt is not None and (ckpt / "shuffle_rng.pt").exists():
        shuffle_gen.set_state(torch_load(ckpt / "shuffle_rng.pt"))

    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc="ppo",
               disable=not run.progress or not distributed.is_main(), dynamic_ncols=True)
    for it in bar:
        t_iter = time.perf_counter()
        try:
            # 1. generate: sample one response per prompt from the current policy (no gradients); with N
            #    processes each takes its slice of the global batch (whole groups of a prompt's answers)
            g_n = cfg.samples_per_prompt  # one prompt's answers are contiguous
            rows = [r for r in stream.take(cfg.batch_size // g_n) for _ in range(g_n)]
            rows = rows[distributed.shard(len(rows), g_n)]
            t0 = time.perf_counter()
            g = cfg.generation
            rollout, n_trunc = sample_responses(
                models.policy, models.tokenizer, rows, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                top_p=g.top_p, min_new_tokens=g.min_new_tokens, max_prompt_tokens=g.max_prompt_tokens,
                batch_size=g.batch_size, device=device, autocast=amp(), keep_logprobs=cfg.old_logprobs == "sampling",
                value_head=models.value_head,
            )
            t_gen = time.perf_counter() - t0

            # 2. score: reward source on (question, answer) texts; EOS policy; then old/ref log-probs and values
            t0 = time.perf_counter()
            raw = check_finite(reward_fn(rollout.prompts, rollout.responses, rows=rows),
                               getattr(reward_fn, "name", "reward"))
            scores, valid = apply_eos_policy(raw, rollout.ended_with_eos, cfg)
            centred = ops.centre_within_groups(scores, g_n, valid) if cfg.score_baseline == "prompt_mean" else None
            mask = (rollout.response_mask & valid[:, None]).float()
            logprobs, ref_logprobs, values = score_batch(models, rollout, cfg, device, amp)
            t_score = time.perf_counter() - t0

            # 3. rewards and 4. advantages (pure math in rlaif.ops)
            parts = {"scores": scores if centred is None else centred, "mask": mask, "logprobs": logprobs,
                     "ref_logprobs": ref_logprobs, "values": values}
            adv = compute_advantages(parts, cfg, kl_ctl.value)
            sc = Scored(rollout, scores, raw, valid, mask, logprobs, ref_logprobs, values, adv["rewards"], adv["kl"],
                        adv["advantages"], adv["returns"],
                        reward_fn.last_std if isinstance(reward_fn, EnsembleReward) else None, centred)

            # 5. update: critic first, then policy (the seed's order); a shared critic trains inside the policy's
            #    update (one loss, one pass)
            t0 = time.perf_counter()
            stats: dict[str, float] = {}
            if distributed.any_true(bool(valid.any())):
                if models.value is not None:
                    stats.update(value_update(models, opt_value, sc, cfg, device, amp, shuffle_gen))
                stats.update(policy_update(models, opt_policy, sc, kl_ctl.value, cfg, device, amp, shuffle_gen,
                                           iteration=it))
            else:
                log.warning("iteration %d: no rollout ended with EOS; update skipped (ppo.missing_eos=drop)", it + 1)
            t_update = time.perf_counter() - t0
        except FloatingPointError as e:  # NaN/inf: stop; the last good checkpoint stays, no weights saved
            raise FloatingPointError(f"iteration {it + 1}: {e}") from None

        # 6. KL controller and metrics (over every process's rollouts)
        sc_all = global_view(sc)
        n_valid = int(sc_all.valid.sum())
        seq_kl = sc_all.kl.sum(1)[sc_all.valid].mean().item() if n_valid else math.nan
        beta_used = kl_ctl.value
        if n_valid:  # an iteration that measured nothing must not move the adaptive coefficient
            kl_ctl.update(seq_kl, n_valid)
        n_tok = int(sc_all.rollout.response_mask.sum())
        n_trunc = int(distributed.all_reduce_floats([n_trunc])[0])
        dt = time.perf_counter() - t_iter
        for js in judge_sources:  # pairwise judge reward: win-rate against the reference policy's answers
            keys = sorted(js.last_stats)
            means = distributed.all_reduce_floats([js.last_stats[k] for k in keys])
            stats.update({k: v / distributed.world().size for k, v in zip(keys, means)})
        if validator is not None and due(cfg.validation, it + 1, cfg.iterations):  # held-out signal
            t0 = time.perf_counter()
            stats.update(validator.validate(models.policy), s_validate=time.perf_counter() - t0)
        row = metrics.log(it + 1, iteration_metrics(sc_all, stats, seq_kl, beta_used, n_tok, n_trunc, dt,
                                                     t_gen, t_score, t_update, cfg.kl_mode == "reward"))
        kl_shown = seq_kl if math.isfinite(seq_kl) else float("nan")
        bar.set_postfix(score=f"{row['score_mean'] if row['score_mean'] is not None else math.nan:.3f}", kl=f"{kl_shown:.3f}", eos=f"{row['eos_rate']:.2f}")
        if not run.progress:
            log.info("iter %d/%d score %.3f (raw reward %.3f) kl %.4f len %.1f eos %.2f %.1fs", it + 1,
                     cfg.iterations, row["score_mean"] if row["score_mean"] is not None else math.nan,
                     row["reward_mean"], kl_shown, row["response_length"], row["eos_rate"], dt)
        log_validation(row, it + 1)

        # 7. save: policy every save_every, resumable checkpoint every checkpoint_every
        if cfg.save_every and (it + 1) % cfg.save_every == 0:
            save_policy(models, out / f"policy-iter-{it + 1:05d}")
        if cfg.checkpoint_every and ((it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations):
            save_iteration_checkpoint(out, it + 1, models, (opt_policy, opt_value), kl_ctl, stream.position,
                                      shuffle_gen, run.keep_checkpoints, save_checkpoint)
    bar.close()
    metrics.close()
    final = out / "policy"
    save_policy(models, final)
    return final


__all__ = ["GenerationConfig", "Models", "PPOConfig", "RewardConfig", "Scored", "apply_eos_policy", "build_models",
           "build_optimizers", "check_data_parallel", "global_view", "load_policy_and_reference", "score_batch",
           "start_replicas", "train"]
