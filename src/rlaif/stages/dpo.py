"""Direct Preference Optimization on the preference rows `rlaif label` writes (`rlaif dpo`): no reward model, no
sampling; the policy learns from (prompt, chosen, rejected) pairs against a frozen reference.

Before training: 1) read and split the pairs (bad rows fail before anything is written); 2) tokenise prompt +
answer with the SFT chat formatting, so only answer tokens (with their end-of-turn token) count; 3) the reference
log-probabilities of every answer, computed ONCE and cached in `output_dir/reference_logps.pt` (keyed by the
reference model and the exact token ids; a rerun or a resume reuses them). On a fresh run the reference is the
starting policy itself, scored before its first update, so no second copy is loaded; otherwise
(`dpo.reference`, or a resume whose cache is gone) the reference model is loaded, used once and freed.

Each optimizer step: 1) the next micro_batch_size x gradient_accumulation_steps pairs of a seeded epoch order;
2) the learning rate (linear warm-up, then linear or cosine down to a floor); 3) per micro-batch, chosen and
rejected answers in one forward pass, summed answer log-probabilities, and the DPO loss
-(1-e) log sigmoid(beta h) - e log sigmoid(-beta h) with h the chosen-minus-rejected log-ratio to the reference
and e the per-pair smoothing (label_smoothing, and 1 - label_prob for soft labels); each micro-batch's sum over
pairs is divided by the pairs of the whole step, so 1 x 8 equals 8 x 1; 4) gradient clipping and AdamW;
5) held-out loss, implicit rewards, margin and accuracy every `eval_every` steps; 6) metrics; 7) resumable
checkpoints. The final policy goes to `output_dir/policy` (Hugging Face format with its tokenizer) and the
scores to `output_dir/summary.json`.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed, ops
from ..checkpoint import find_resume_checkpoint, load_json, save_checkpoint, save_json
from ..config import ConfigError
from ..metrics import MetricsLogger, read_metrics
from ..models.loading import disable_dropout, load_causal_lm, load_tokenizer
from ..optimizer_step import optimizer_step
from ..runtime import RunConfig, autocast_for, seed_everything, setup_run
from .dpo_config import DPOConfig
from .dpo_pairs import (
    DPOData,
    EncodedPair,
    cache_key,
    encode_pairs,
    load_reference_cache,
    pair_smoothing,
    policy_logps,
    read_data,
    save_reference_cache,
    score_all,
)
from .training_loop import BatchStream, optimizer_for, restore_trainer_state, save_model, save_step_checkpoint

log = logging.getLogger("rlaif.dpo")

REFERENCE_CACHE = "reference_logps.pt"


# ---------------------------------------------------------------------------------------------------------
# helpers (each a step of the loop)


def reference_logps(cfg: DPOConfig, run: RunConfig, out: Path, pairs: dict[str, list[EncodedPair]], policy,
                    fresh: bool, pad_id: int, device, amp) -> tuple[dict[str, torch.Tensor], str]:
    """Step 3 of the set-up: the cached reference log-probabilities, or computed once and cached.

    `fresh` (no update made yet): with dpo.reference unset, the policy itself is the reference, scored now.
    Returns the tensors and "reused" or "computed".
    """
    name = cfg.reference or cfg.policy
    path = out / REFERENCE_CACHE
    key = cache_key(name, pairs, device, run.precision)
    cached = load_reference_cache(path, key)
    if cached is not None:
        log.info("reference log-probabilities reused from %s", path)
        return cached, "reused"
    own = not (fresh and cfg.reference is None)
    ref = load_causal_lm(name, device=device) if own else policy
    t0 = time.perf_counter()
    cached = {"key": key, "reference": name}
    for part, items in pairs.items():
        cached[f"{part}_chosen"], cached[f"{part}_rejected"] = score_all(ref, items, cfg.eval_batch_size, pad_id,
                                                                          device, amp)
    if own:  # frozen and no longer needed: free it before training
        del ref
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bad = [k for k, v in cached.items() if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v).all())]
    if bad:  # nothing to learn against: stop before the cache or any update is written
        raise FloatingPointError(f"reference {name}: non-finite log-probabilities in {', '.join(bad)}")
    if distributed.is_main():
        save_reference_cache(path, cached)
    distributed.barrier()
    log.info("reference log-probabilities of %d answers computed in %.1f s and cached in %s",
             2 * sum(len(v) for v in pairs.values()), time.perf_counter() - t0, path)
    return cached, "computed"


def pair_stats(losses: torch.Tensor, chosen_r: torch.Tensor, rejected_r: torch.Tensor, prefix: str = ""
               ) -> dict[str, float]:
    """Mean loss, implicit rewards, margin and accuracy (chosen reward > rejected; ties count as wrong)."""
    s = ops.pairwise_stats(chosen_r, rejected_r)
    return {f"{prefix}loss": losses.mean().item(), f"{prefix}rewards_chosen": s["chosen_mean"],
            f"{prefix}rewards_rejected": s["rejected_mean"], f"{prefix}reward_margin": s["margin_mean"],
            f"{prefix}accuracy": s["accuracy"]}


def train_step(model, opt, pairs: list[EncodedPair], ref: tuple[torch.Tensor, torch.Tensor], cfg: DPOConfig,
               pad_id: int, device, amp) -> dict[str, float]:
    """Steps 3-4: per micro-batch, sum of pair losses / pairs of the whole step; clip; AdamW.

    `ref`: (b,) cached reference log-probabilities of the step's chosen and rejected answers. With N processes
    each takes every N-th pair and the gradients are summed over processes (the normaliser counts every
    process's pairs), so the step equals one process's.
    """
    model.train()
    n_pairs = len(pairs)  # the normaliser of the whole optimizer step
    # each process's pairs with their reference log-probs (chosen, rejected)
    mine = list(zip(distributed.my_items(pairs), distributed.my_items(ref[0]).tolist(),
                    distributed.my_items(ref[1]).tolist()))
    parts: dict[str, list[torch.Tensor]] = {k: [torch.zeros(0)] for k in ("losses", "chosen", "rejected", "logp_c",
                                                                          "logp_r")}
    filler = (pairs[0], 0.0, 0.0) if pairs else None
    for chunk, weight in distributed.lockstep_chunks(mine, cfg.micro_batch_size, filler, model):
        part = [p for p, _, _ in chunk]
        chosen, rejected = policy_logps(model, part, pad_id, device, amp)
        eps = torch.tensor([p.smoothing for p in part], device=chosen.device)
        ref_c = torch.tensor([c for _, c, _ in chunk], dtype=torch.float32, device=device)
        ref_r = torch.tensor([r for _, _, r in chunk], dtype=torch.float32, device=device)
        losses, chosen_r, rejected_r = ops.dpo_loss(chosen, rejected, ref_c, ref_r, cfg.beta, eps)
        loss = losses.sum() * weight / n_pairs
        if not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            raise FloatingPointError(f"loss is {loss.item()}")
        distributed.backward(loss, model)
        if weight:
            for k, v in zip(parts, (losses, chosen_r, rejected_r, chosen, rejected)):
                parts[k].append(v.detach().float().cpu())
    norm = optimizer_step(opt, model, cfg.max_grad_norm, "dpo")
    cat = {k: distributed.gather_items(torch.cat(v), n_pairs) for k, v in parts.items()}
    return {**pair_stats(cat["losses"], cat["chosen"], cat["rejected"]),
            "logps_chosen": cat["logp_c"].mean().item(), "logps_rejected": cat["logp_r"].mean().item(),
            "grad_norm": norm, "pairs": n_pairs,
            "tokens": sum(p.chosen.n_trained + p.rejected.n_trained for p in pairs),
            "trained_state_gib": distributed.trained_state_gib(model, opt)}


@torch.no_grad()
def evaluate(model, pairs: list[EncodedPair], ref: tuple[torch.Tensor, torch.Tensor], cfg: DPOConfig, pad_id: int,
             device, amp, prefix: str = "eval_") -> dict[str, float]:
    """Step 5: held-out DPO loss, implicit rewards, margin and accuracy against the cached reference."""
    chosen, rejected = score_all(model, pairs, cfg.eval_batch_size, pad_id, device, amp)
    losses, chosen_r, rejected_r = ops.dpo_loss(chosen, rejected, ref[0], ref[1], cfg.beta,
                                                torch.tensor([p.smoothing for p in pairs]))
    return {**pair_stats(losses, chosen_r, rejected_r, prefix), f"{prefix}pairs": len(pairs)}


def learning_rate(step: int, total: int, cfg: DPOConfig) -> float:
    schedule = ops.linear_with_floor_lr if cfg.lr_schedule == "linear" else ops.cosine_with_floor_lr
    return schedule(step, total, cfg.learning_rate, cfg.min_lr_ratio, cfg.warmup_steps)


def truncation_counts(pairs: list[EncodedPair]) -> dict[str, int]:
    seqs = [e for p in pairs for e in (p.chosen, p.rejected)]
    return {"prompts_truncated": sum(e.prompt_truncated for e in seqs),
            "answers_truncated": sum(e.completion_truncated for e in seqs)}


# ---------------------------------------------------------------------------------------------------------
# the loop


def train(run: RunConfig, cfg: DPOConfig, resolved_config: dict | None = None, data: DPOData | None = None) -> Path:
    """Run DPO; returns the folder of the final policy (Hugging Face format, with the tokenizer).

    `data`: rows already read by `read_data` (the CLI validates them before it writes anything).
    """
    cfg.validate()
    data = data if data is not None else read_data(cfg, run.seed)  # bad input fails before any output
    out, device = setup_run(run, data_parallel=True, fsdp=True)
    seed_everything(run.seed)
    amp = autocast_for(device, run.precision)
    tokenizer = load_tokenizer(cfg.policy, padding_side="left")  # saved with the policy, ready for generation
    pad_id = tokenizer.pad_token_id  # padding is masked by lengths, so pad == eos would be harmless here
    pairs = {"train": encode_pairs(tokenizer, data.train, cfg), "eval": encode_pairs(tokenizer, data.eval, cfg)}
    for name, part in pairs.items():
        if part:
            log.info("%s: %d pairs, %s (max_length %d)", name, len(part), truncation_counts(part), cfg.max_length)
    batch = cfg.micro_batch_size * cfg.gradient_accumulation_steps
    stream = BatchStream(len(pairs["train"]), batch, run.seed)
    total = cfg.max_steps or cfg.epochs * stream.steps_per_epoch

    ckpt = find_resume_checkpoint(out, run.resume)
    if ckpt is not None and (not (ckpt / "model" / "config.json").is_file()
                             or load_json(ckpt / "trainer_state.json").get("stage") != "dpo"):
        raise ConfigError(f"config key 'run.output_dir': {ckpt} is not a DPO checkpoint (another stage's run?); "
                          "pick a fresh run.output_dir or set run.resume=never")
    model = load_causal_lm(str(ckpt / "model") if ckpt is not None else cfg.policy, device=device)
    model.config.pad_token_id = pad_id
    if cfg.disable_dropout:
        disable_dropout(model)
    # reference log-probabilities: once, before any update, cached in the run folder
    ref, ref_source = reference_logps(cfg, run, out, pairs, model, ckpt is None, pad_id, device, amp)
    ref_train = (ref["train_chosen"], ref["train_rejected"])
    ref_eval = (ref["eval_chosen"], ref["eval_rejected"])
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    # after the reference log-probs, which the starting policy may have scored whole (run.fsdp shards it here)
    opt = optimizer_for(model, run, cfg.learning_rate, cfg.weight_decay, cfg.max_grad_norm)
    metrics = MetricsLogger(out, run.report_to, resolved_config, step_key="step")
    start = restore_trainer_state(ckpt, opt, stream, total, log, model) if ckpt is not None else 0
    metrics.truncate_after(start if ckpt is not None else -1)  # each step logged once, step 0 included
    log.info("DPO of %s against %s (beta %g), %d training pairs, %d held-out, %d steps of %d pairs", cfg.policy,
             cfg.reference or "the starting policy", cfg.beta, len(pairs["train"]), len(pairs["eval"]), total, batch)

    if pairs["eval"] and ckpt is None:  # before any update: rewards 0, loss log 2
        metrics.log(0, evaluate(model, pairs["eval"], ref_eval, cfg, pad_id, device, amp))
    bar = tqdm(range(start, total), initial=start, total=total, desc="dpo",
               disable=not run.progress or not distributed.is_main(), dynamic_ncols=True)
    last_eval: dict[str, float] | None = None
    for step in bar:
        t0 = time.perf_counter()
        # 1. batch: the next pairs of this epoch's seeded order, with their cached reference log-probabilities
        idx = stream.take()
        step_pairs = [pairs["train"][i] for i in idx]
        step_ref = (ref_train[0][idx], ref_train[1][idx])
        # 2. learning rate of this step: linear warm-up, then linear or cosine down to the floor
        lr = learning_rate(step, total, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        # 3-4. chosen + rejected forward, DPO loss normalised by the step's pairs; clip; AdamW
        try:
            stats = train_step(model, opt, step_pairs, step_ref, cfg, pad_id, device, amp)
        except FloatingPointError as e:  # the last good checkpoint stays; no NaN weights are written
            raise FloatingPointError(f"step {step + 1}: {e}") from None
        dt = time.perf_counter() - t0
        row = {**stats, "lr": lr, "epoch": stream.progress, **truncation_counts(step_pairs),
               "pairs_per_s": len(step_pairs) / dt, "s_step": dt}
        # 5. held-out loss, rewards, margin and accuracy
        if pairs["eval"] and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == total):
            last_eval = evaluate(model, pairs["eval"], ref_eval, cfg, pad_id, device, amp)
            if not math.isfinite(last_eval["eval_loss"]):  # the model now outputs NaN/inf: stop before saving it
                raise FloatingPointError(f"step {step + 1}: held-out loss is {last_eval['eval_loss']}")
            row.update(last_eval)
        # 6. metrics
        metrics.log(step + 1, row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}", lr=f"{lr:.2e}")
        if not run.progress:
            log.info("step %d/%d loss %.4f acc %.3f margin %.4g lr %.3g grad_norm %.3f%s", step + 1, total,
                     row["loss"], row["accuracy"], row["reward_margin"], lr, row["grad_norm"],
                     f" eval_accuracy {row['eval_accuracy']:.3f}" if "eval_accuracy" in row else "")
        # 7. resumable checkpoint
        if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == total):
            state = {"stage": "dpo", "step": step + 1, "epoch": stream.epoch, "offset": stream.offset,
                     "total_steps": total}
            save_step_checkpoint(out, step + 1, model, opt, state, run.keep_checkpoints, save_checkpoint)
    bar.close()
    metrics.close()

    final = out / "policy"
    save_model(model, tokenizer, final)
    if pairs["eval"] and last_eval is None:  # a rerun of a finished run
        last_eval = evaluate(model, pairs["eval"], ref_eval, cfg, pad_id, device, amp)
    if not distributed.is_main():
        return final
    logged = {r["step"]: r for r in read_metrics(out)}  # the same summary whether or not the run was resumed
    strip = len("eval_")
    summary = {
        "policy": cfg.policy, "reference": cfg.reference or cfg.policy, "beta": cfg.beta, "steps": total,
        "train_pairs": len(pairs["train"]), "eval_pairs": len(pairs["eval"]), "ties_dropped": data.ties_dropped,
        **({"hybrid_labels": data.human} if data.human else {}),
        "reference_logps": {"file": str(out / REFERENCE_CACHE), "cache": ref_source},
        "last_step": {k: v for k, v in logged.get(total, {}).items() if not k.startswith("eval_")} or None,
        "eval_before": {k[strip:]: v for k, v in logged[0].items() if k.startswith("eval_")} if 0 in logged
        else None,
        "eval": {k[strip:]: v for k, v in last_eval.items()} if last_eval else None,
        **{f"train_{k}": v for k, v in truncation_counts(pairs["train"]).items()},
    }
    if last_eval:
        log.info("held-out accuracy %.3f, reward margin %.4g, loss %.4f", last_eval["eval_accuracy"],
                 last_eval["eval_reward_margin"], last_eval["eval_loss"])
    save_json(out / "summary.json", summary)
    return final


__all__ = ["DPOConfig", "DPOData", "read_data", "train", "evaluate", "encode_pairs", "pair_smoothing",
           "REFERENCE_CACHE"]
