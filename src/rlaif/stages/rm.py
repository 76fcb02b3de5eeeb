"""Reward-model training on preference pairs (Bradley-Terry): the stage between AI labels and PPO (`rlaif rm`).

The backbone is any `AutoModelForSequenceClassification` with one output: a decoder (SmolLM2 + a scalar head read
at the last real token, shown the chat transcript) or an encoder (BERT / MiniLM / DeBERTa, shown (question,
answer) as a text pair). The inputs come from `rewards.sources.encode_reward_inputs`, the very function PPO's
`ModelReward` scores with, so training and PPO see identical tokens.

Each optimizer step: 1) the next micro_batch_size x gradient_accumulation_steps pairs of a seeded epoch order;
2) the learning rate of the step (linear warm-up, then linear or cosine down to a floor); 3) per micro-batch,
chosen and rejected answers in one forward pass and the loss -log sigmoid(r_c - r_r - margin) (cross-entropy
against `label_prob` for soft labels) + center_coef * mean((r_c + r_r)^2), each micro-batch's sum over pairs
divided by the pairs of the whole step, so micro-batch 1 x accumulation 8 equals 8 x 1; 4) gradient clipping
and AdamW; 5) held-out pairwise accuracy, loss and reward scale every `eval_every` steps; 6) metrics; 7)
resumable checkpoints. After the last step the mean reward of the training `chosen` answers is stored as
`rlaif_reward_bias` in the model config (ModelReward subtracts it, so chosen answers average 0), the model goes
to `output_dir/model` (Hugging Face format with its tokenizer) and the scores to `output_dir/summary.json`.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed, ops
from ..checkpoint import (
    find_resume_checkpoint,
    load_json,
    save_checkpoint,
    save_json,
)
from ..config import ConfigError
from ..data.preferences import PreferenceRow
from ..metrics import MetricsLogger
from ..models.loading import disable_dropout, is_decoder_only, load_sequence_classifier, load_tokenizer
from ..optimizer_step import optimizer_step
from ..runtime import RunConfig, autocast_for, seed_everything, setup_run
from .rm_config import RMConfig
from .rm_pairs import RMData, pair_rewards, read_data, rewards_of
from .training_loop import BatchStream, optimizer_for, restore_trainer_state, save_model, save_step_checkpoint

log = logging.getLogger("rlaif.rm")


# ---------------------------------------------------------------------------------------------------------
# helpers (each a step of the loop)


def pair_loss(chosen: torch.Tensor, rejected: torch.Tensor, rows: list[PreferenceRow], cfg: RMConfig
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over the b pairs of (Bradley-Terry + center_coef * centering); also the two terms (0-dim)."""
    margin = torch.tensor([cfg.margin if x.margin is None else x.margin for x in rows], device=chosen.device)
    label = None
    if cfg.use_label_prob and any(x.label_prob is not None for x in rows):
        label = torch.tensor([1.0 if x.label_prob is None else x.label_prob for x in rows], device=chosen.device)
    bt = ops.bradley_terry_loss(chosen, rejected, margin=margin, label_prob=label)
    center = ops.reward_centering_penalty(chosen, rejected)
    total = bt + cfg.center_coef * center if cfg.center_coef else bt
    return total, bt, center


def learning_rate(step: int, total: int, cfg: RMConfig) -> float:
    schedule = ops.linear_with_floor_lr if cfg.lr_schedule == "linear" else ops.cosine_with_floor_lr
    return schedule(step, total, cfg.learning_rate, cfg.min_lr_ratio, cfg.warmup_steps)


def train_step(model, opt, tokenizer, fmt: str, rows: list[PreferenceRow], cfg: RMConfig, device, amp
               ) -> dict[str, float]:
    """Steps 3-4: per micro-batch, sum of pair losses / pairs of the whole step; clip; AdamW.

    `rows`: the whole step's pairs; with N processes each takes every N-th pair and the gradients are summed over
    processes (the normaliser counts every process's pairs), so the step equals one process's."""
    model.train()
    n_pairs = len(rows)  # the normaliser of the whole optimizer step
    mine = distributed.my_items(rows)
    sums = {"loss": 0.0, "bt_loss": 0.0, "center_penalty": 0.0}
    chosen_all, rejected_all, n_full = [torch.zeros(0)], [torch.zeros(0)], 0
    for part, weight in distributed.lockstep_chunks(mine, cfg.micro_batch_size, rows[0] if rows else None, model):
        chosen, rejected, full = pair_rewards(model, tokenizer, fmt, part, cfg.max_length, device, amp)
        total, bt, center = pair_loss(chosen, rejected, part, cfg)
        loss = total * (len(part) / n_pairs) * weight  # the micro-batch's share of the step's mean
        if not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            raise FloatingPointError(f"loss is {loss.item()}")
        distributed.backward(loss, model)
        if not weight:  # a lock-step pass of a sharded model: nothing of it is counted
            continue
        w = len(part) / n_pairs
        sums["loss"] += loss.item()
        sums["bt_loss"] += bt.item() * w
        sums["center_penalty"] += center.item() * w
        chosen_all.append(chosen.detach().cpu())
        rejected_all.append(rejected.detach().cpu())
        n_full += full
    reduced = distributed.all_reduce_floats([*sums.values(), n_full])
    sums, n_full = dict(zip(sums, reduced[:-1])), int(reduced[-1])
    norm = optimizer_step(opt, model, cfg.max_grad_norm, "rm")
    stats = ops.pairwise_stats(distributed.gather_items(torch.cat(chosen_all), n_pairs),
                               distributed.gather_items(torch.cat(rejected_all), n_pairs))
    return {**sums, **stats, "grad_norm": norm, "pairs": n_pairs, "inputs_at_max_length": n_full,
            "trained_state_gib": distributed.trained_state_gib(model, opt)}


@torch.no_grad()
def evaluate(model, tokenizer, fmt: str, rows: list[PreferenceRow], cfg: RMConfig, device, amp,
             prefix: str = "eval_") -> dict[str, float]:
    """Step 5: held-out pairwise accuracy, loss (pair-weighted over batches) and reward scale."""
    model.eval()
    chosen_all, rejected_all, bt_sum = [torch.zeros(0)], [torch.zeros(0)], 0.0
    mine = distributed.my_items(rows)  # each process scores every N-th pair; results gathered in order
    for part, weight in distributed.lockstep_chunks(mine, cfg.eval_batch_size, rows[0] if rows else None, model):
        chosen, rejected, _ = pair_rewards(model, tokenizer, fmt, part, cfg.max_length, device, amp)
        if not weight:
            continue
        bt_sum += pair_loss(chosen, rejected, part, cfg)[1].item() * len(part)
        chosen_all.append(chosen.float().cpu())
        rejected_all.append(rejected.float().cpu())
    distributed.reshard(model)
    bt_sum = distributed.all_reduce_floats([bt_sum])[0]
    stats = ops.pairwise_stats(distributed.gather_items(torch.cat(chosen_all), len(rows)),
                               distributed.gather_items(torch.cat(rejected_all), len(rows)))
    return {f"{prefix}loss": bt_sum / len(rows), **{prefix + k: v for k, v in stats.items()},
            f"{prefix}pairs": len(rows)}


@torch.no_grad()
def chosen_rewards(model, tokenizer, fmt: str, rows: list[PreferenceRow], cfg: RMConfig, device, amp
                   ) -> torch.Tensor:
    """(n,) raw rewards of the `chosen` answers (the bias pass after training)."""
    model.eval()
    out = [torch.zeros(0)]
    mine = distributed.my_items(rows)
    for part, weight in distributed.lockstep_chunks(mine, cfg.eval_batch_size, rows[0] if rows else None, model):
        r = rewards_of(model, tokenizer, fmt, [x.prompt for x in part], [x.chosen for x in part], cfg.max_length,
                       device, amp)[0].float().cpu()
        if weight:
            out.append(r)
    distributed.reshard(model)
    return distributed.gather_items(torch.cat(out), len(rows))


def save_reward_model(model, tokenizer, folder: Path, bias: float) -> None:
    """The final RM in Hugging Face format with its tokenizer and `rlaif_reward_bias`, written atomically."""
    model.config.rlaif_reward_bias = bias
    save_model(model, tokenizer, folder)


# ---------------------------------------------------------------------------------------------------------
# the loop


def train(run: RunConfig, cfg: RMConfig, resolved_config: dict | None = None, data: RMData | None = None) -> Path:
    """Train a reward model; returns the folder of the final model (Hugging Face format, with the tokenizer).

    `data`: rows already read by `read_data` (the CLI validates them before it writes anything).
    """
    cfg.validate()
    data = data if data is not None else read_data(cfg, run.seed)  # bad input fails before any output
    tokenizer = load_tokenizer(cfg.model, padding_side="right")  # as ModelReward loads it
    out, device = setup_run(run, data_parallel=True, fsdp=True)
    seed_everything(run.seed)
    amp = autocast_for(device, run.precision)
    batch = cfg.micro_batch_size * cfg.gradient_accumulation_steps
    stream = BatchStream(len(data.train), batch, run.seed)
    total = cfg.max_steps or cfg.epochs * stream.steps_per_epoch

    ckpt = find_resume_checkpoint(out, run.resume)
    if ckpt is not None and (not (ckpt / "model" / "config.json").is_file()
                             or load_json(ckpt / "trainer_state.json").get("stage") != "rm"):
        raise ConfigError(f"config key 'run.output_dir': {ckpt} is not a reward-model checkpoint (another stage's "
                          "run?); pick a fresh run.output_dir or set run.resume=never")
    model = load_sequence_classifier(str(ckpt / "model") if ckpt is not None else cfg.model, device=device,
                                     pad_token_id=tokenizer.pad_token_id)
    fmt = "chat" if is_decoder_only(model.config) else "pair"  # ModelReward's input_format=auto
    if cfg.disable_dropout:
        disable_dropout(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if fmt == "chat":
            model.config.use_cache = False
    opt = optimizer_for(model, run, cfg.learning_rate, cfg.weight_decay, cfg.max_grad_norm)
    metrics = MetricsLogger(out, run.report_to, resolved_config, step_key="step")
    start = restore_trainer_state(ckpt, opt, stream, total, log, model) if ckpt is not None else 0
    metrics.truncate_after(start if ckpt is not None else -1)  # each step logged once, step 0 included
    log.info("reward model %s (%s input), %d training pairs, %d held-out, %d steps of %d pairs", cfg.model, fmt,
             len(data.train), len(data.eval), total, batch)

    if data.eval and ckpt is None:  # held-out accuracy before any update (about 0.5 for a fresh head)
        row = metrics.log(0, evaluate(model, tokenizer, fmt, data.eval, cfg, device, amp))
        log.info("step 0 eval_accuracy %.3f eval_loss %.4f", row["eval_accuracy"], row["eval_loss"])
    bar = tqdm(range(start, total), initial=start, total=total, desc="rm",
               disable=not run.progress or not distributed.is_main(), dynamic_ncols=True)
    last_eval: dict[str, float] | None = None
    for step in bar:
        t0 = time.perf_counter()
        # 1. batch: the next pairs of this epoch's seeded order
        rows = [data.train[i] for i in stream.take()]
        # 2. learning rate of this step: linear warm-up, then linear or cosine down to the floor
        lr = learning_rate(step, total, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        # 3-4. chosen + rejected forward, Bradley-Terry (+ centering) normalised by the step's pairs; clip; AdamW
        try:
            stats = train_step(model, opt, tokenizer, fmt, rows, cfg, device, amp)
        except FloatingPointError as e:  # the last good checkpoint stays; no NaN weights are written
            raise FloatingPointError(f"step {step + 1}: {e}") from None
        dt = time.perf_counter() - t0
        row = {**stats, "lr": lr, "epoch": stream.progress, "pairs_per_s": len(rows) / dt, "s_step": dt}
        # 5. held-out accuracy, loss and reward scale
        if data.eval and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == total):
            last_eval = evaluate(model, tokenizer, fmt, data.eval, cfg, device, amp, prefix="")
            if not math.isfinite(last_eval["loss"]):  # the model now outputs NaN/inf: stop before saving it
                raise FloatingPointError(f"step {step + 1}: held-out loss is {last_eval['loss']}")
            row.update({f"eval_{k}": v for k, v in last_eval.items()})
        # 6. metrics
        metrics.log(step + 1, row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}", lr=f"{lr:.2e}")
        if not run.progress:
            log.info("step %d/%d loss %.4f acc %.3f lr %.3g grad_norm %.3f%s", step + 1, total, row["loss"],
                     row["accuracy"], lr, row["grad_norm"],
                     f" eval_accuracy {row['eval_accuracy']:.3f}" if "eval_accuracy" in row else "")
        # 7. resumable checkpoint
        if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == total):
            state = {"stage": "rm", "step": step + 1, "epoch": stream.epoch, "offset": stream.offset,
                     "total_steps": total}
            save_step_checkpoint(out, step + 1, model, opt, state, run.keep_checkpoints, save_checkpoint)
    bar.close()
    metrics.close()

    # the bias: training `chosen` answers average 0 once ModelReward subtracts it
    train_chosen = chosen_rewards(model, tokenizer, fmt, data.train, cfg, device, amp)
    bias = train_chosen.mean().item()
    if not math.isfinite(bias):  # the model outputs NaN/inf: no reward model with a NaN bias is saved
        raise FloatingPointError(f"after step {total}: rewards of the training answers are not finite ({bias})")
    final = out / "model"
    save_reward_model(model, tokenizer, final, bias)
    summary = {"model": cfg.model, "input_format": fmt, "steps": total, "train_pairs": len(data.train),
               "eval_pairs": len(data.eval), "ties_dropped": data.ties_dropped,
               **({"hybrid_labels": data.human} if data.human else {}), "rlaif_reward_bias": bias,
               "train_chosen_reward_std": train_chosen.std().item() if len(train_chosen) > 1 else 0.0,
               "eval": None}
    if data.eval:
        ev = dict(last_eval) if last_eval is not None else evaluate(model, tokenizer, fmt, data.eval, cfg, device,
                                                                     amp, prefix="")
        for k in ("reward_mean", "chosen_mean", "rejected_mean"):  # as PPO will see them: bias subtracted
            ev[k] -= bias
        summary["eval"] = ev
        log.info("held-out accuracy %.3f, margin %.4g, reward std %.4g (bias %.4g)", ev["accuracy"],
                 ev["margin_mean"], ev["reward_std"], bias)
    if distributed.is_main():
        save_json(out / "summary.json", summary)
    return final


__all__ = ["RMConfig", "RMData", "read_data", "train", "evaluate", "pair_rewards", "rewards_of"]
