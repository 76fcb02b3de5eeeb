"""Supervised fine-tuning on (prompt, answer) pairs: the first stage of the pipeline (`rlaif sft`).

Each optimizer step: 1) the next micro_batch_size x gradient_accumulation_steps rows of a seeded epoch order;
2) the learning rate of the step (linear warm-up, cosine down to a floor); 3) forward/backward per micro-batch
with the cross-entropy of the answer tokens only (prompt and padding are labelled -100; the answer's
end-of-turn token is trained), summed and divided by the answer-token count of the whole step, so micro-batch
1 x accumulation 8 gives the same update as 8 x 1; 4) gradient clipping and AdamW; 5) held-out loss every
`eval_every` steps; 6) metrics; 7) resumable checkpoints. The final model lands in `output_dir/model` in
Hugging Face format with its tokenizer, ready to be `ppo.policy`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed, ops
from ..checkpoint import find_resume_checkpoint, save_checkpoint
from ..config import ConfigError
from ..data.jsonl import DataError
from ..data.sft import Encoded, collate, encode_rows, load_sft_rows, split_eval
from ..metrics import MetricsLogger
from ..models.loading import load_causal_lm, load_tokenizer
from ..optimizer_step import optimizer_step
from ..runtime import RunConfig, autocast_for, seed_everything, setup_run
from .sft_config import SFTConfig
from .training_loop import BatchStream, optimizer_for, restore_trainer_state, save_model, save_step_checkpoint

log = logging.getLogger("rlaif.sft")


# ---------------------------------------------------------------------------------------------------------
# helpers (each a step of the loop)


@dataclass
class SFTData:
    train: list[Encoded]
    eval: list[Encoded]


def build_data(cfg: SFTConfig, seed: int, tokenizer) -> SFTData:
    """Read, split and tokenise; bad rows fail here, before any training."""
    rows = load_sft_rows(cfg.data)
    if cfg.eval_data is not None:
        held = load_sft_rows(cfg.eval_data)
    elif cfg.eval_fraction > 0:
        rows, held = split_eval(rows, cfg.eval_fraction, seed)
    else:
        held = []
    data = SFTData(encode_rows(tokenizer, rows, cfg.max_length), encode_rows(tokenizer, held, cfg.max_length))
    for name, part in (("train", data.train), ("eval", data.eval)):
        if part:
            log.info("%s: %d rows, %d answer tokens, %d prompts cut on the left, %d answers cut on the right "
                     "(max_length %d)", name, len(part), sum(e.n_trained for e in part),
                     sum(e.prompt_truncated for e in part), sum(e.completion_truncated for e in part),
                     cfg.max_length)
    return data


def train_step(model, opt, examples: list[Encoded], cfg: SFTConfig, pad_id: int, device, amp) -> dict[str, float]:
    """Steps 3-4: accumulate the answer-token CE over micro-batches (one normaliser), clip, AdamW.

    `examples`: the whole step's rows; with N processes each takes every N-th row and the gradients are summed
    over processes (the normaliser counts every process's answer tokens), so the step equals one process's."""
    model.train()
    n_tokens = sum(e.n_trained for e in examples)  # answer tokens of the whole optimizer step
    mine = distributed.my_items(examples)
    total = 0.0
    for chunk, weight in distributed.lockstep_chunks(mine, cfg.micro_batch_size, examples[0] if examples else None, model):
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        with amp():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits
        ce_sum, _ = ops.token_ce_sum(logits, batch["labels"])
        loss = ce_sum * weight / max(1, n_tokens)
        if not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            raise FloatingPointError(f"loss is {loss.item()}")
        distributed.backward(loss, model)
        total += loss.item()
    total = distributed.all_reduce_floats([total])[0]
    norm = optimizer_step(opt, model, cfg.max_grad_norm, "sft")
    return {"loss": total, "grad_norm": norm, "tokens": n_tokens,
            "trained_state_gib": distributed.trained_state_gib(model, opt)}


@torch.no_grad()
def evaluate(model, examples: list[Encoded], batch_size: int, pad_id: int, device, amp) -> dict[str, float]:
    """Step 5: answer-token mean cross-entropy over the held-out rows (token-weighted across batches)."""
    model.eval()
    total, count = 0.0, 0.0
    mine = distributed.my_items(examples)  # each process scores every N-th row; the sums are reduced
    for chunk, weight in distributed.lockstep_chunks(mine, batch_size, examples[0] if examples else None, model):
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        with amp():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits
        ce_sum, n = ops.token_ce_sum(logits, batch["labels"])
        total, count = total + weight * ce_sum.item(), count + weight * n.item()
    distributed.reshard(model)  # FSDP keeps the root's weights gathered after a forward without backward
    total, count = distributed.all_reduce_floats([total, count])
    loss = total / max(1.0, count)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": int(count)}


# ---------------------------------------------------------------------------------------------------------
# the loop


def train(run: RunConfig, cfg: SFTConfig, resolved_config: dict | None = None) -> Path:
    """Run SFT; returns the folder of the final model (Hugging Face format, with the tokenizer)."""
    cfg.validate()
    out, device = setup_run(run, data_parallel=True, fsdp=True)
    seed_everything(run.seed)
    amp = autocast_for(device, run.precision)
    tokenizer = load_tokenizer(cfg.model, padding_side="left")  # saved with the model, ready for generation
    data = build_data(cfg, run.seed, tokenizer)  # bad input fails before the model is loaded
    if not data.train:
        raise DataError(f"{cfg.data}: no training rows")
    pad_id = tokenizer.pad_token_id  # padding is masked by lengths, so pad == eos would be harmless here
    batch = cfg.micro_batch_size * cfg.gradient_accumulation_steps
    stream = BatchStream(len(data.train), batch, run.seed)
    total = cfg.max_steps or cfg.epochs * stream.steps_per_epoch

    ckpt = find_resume_checkpoint(out, run.resume)
    if ckpt is not None and not (ckpt / "model" / "config.json").is_file():
        raise ConfigError(f"config key 'run.output_dir': {ckpt} is not an SFT checkpoint (another stage's run?); "
                          "pick a fresh run.output_dir or set run.resume=never")
    model = load_causal_lm(str(ckpt / "model") if ckpt is not None else cfg.model, device=device)
    model.config.pad_token_id = pad_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    opt = optimizer_for(model, run, cfg.learning_rate, cfg.weight_decay, cfg.max_grad_norm)
    metrics = MetricsLogger(out, run.report_to, resolved_config, step_key="step")
    start = restore_trainer_state(ckpt, opt, stream, total, log, model) if ckpt is not None else 0
    metrics.truncate_after(start if ckpt is not None else -1)  # each step logged once, step 0 included

    if data.eval and ckpt is None:  # the held-out loss before any update
        row = metrics.log(0, evaluate(model, data.eval, cfg.eval_batch_size, pad_id, device, amp))
        log.info("step 0 eval_loss %.4f", row["eval_loss"])
    bar = tqdm(range(start, total), initial=start, total=total, desc="sft",
               disable=not run.progress or not distributed.is_main(), dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        # 1. batch: the next rows of this epoch's seeded order
        examples = [data.train[i] for i in stream.take()]
        # 2. learning rate of this step: linear warm-up, cosine from the peak down to the floor
        lr = ops.cosine_with_floor_lr(step, total, cfg.learning_rate, cfg.min_lr_ratio, cfg.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        # 3-4. forward/backward on answer tokens, one normaliser for the whole step; clip; AdamW
        try:
            stats = train_step(model, opt, examples, cfg, pad_id, device, amp)
        except FloatingPointError as e:  # the last good checkpoint stays; no NaN weights are written
            raise FloatingPointError(f"step {step + 1}: {e}") from None
        dt = time.perf_counter() - t0
        # 5. held-out loss
        row = {**stats, "lr": lr, "epoch": stream.progress, "rows": len(examples),
               "prompts_truncated": sum(e.prompt_truncated for e in examples),
               "completions_truncated": sum(e.completion_truncated for e in examples),
               "tokens_per_s": stats["tokens"] / dt, "s_step": dt}
        if data.eval and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == total):
            row.update(evaluate(model, data.eval, cfg.eval_batch_size, pad_id, device, amp))
            if not math.isfinite(row["eval_loss"]):  # the model now outputs NaN/inf: stop before saving it
                raise FloatingPointError(f"step {step + 1}: held-out loss is {row['eval_loss']}")
        # 6. metrics
        metrics.log(step + 1, row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
        if not run.progress:
            log.info("step %d/%d loss %.4f lr %.3g grad_norm %.3f%s", step + 1, total, row["loss"], lr,
                     row["grad_norm"], f" eval_loss {row['eval_loss']:.4f}" if "eval_loss" in row else "")
        # 7. resumable checkpoint
        if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == total):
            state = {"step": step + 1, "epoch": stream.epoch, "offset": stream.offset, "total_steps": total}
            save_step_checkpoint(out, step + 1, model, opt, state, run.keep_checkpoints, save_checkpoint)
    bar.close()
    metrics.close()
    final = out / "model"
    save_model(model, tokenizer, final)
    return final


__all__ = ["SFTConfig", "train", "build_data", "evaluate", "BatchStream"]
