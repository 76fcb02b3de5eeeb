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
from ..checkpoint import (
    atomic_dir,
    find_resume_checkpoint,
    load_json,
    save_checkpoint,
    save_json,
    torch_load,
    torch_save,
)
from ..config import ConfigError, check_training_fields, field
from ..data.jsonl import DataError
from ..data.sft import Encoded, collate, encode_rows, load_sft_rows, split_eval
from ..metrics import MetricsLogger
from ..models.loading import load_causal_lm, load_tokenizer
from ..optimizer_step import optimizer_step
from ..runtime import RunConfig, autocast_for, rng_state, seed_everything, set_rng_state, setup_run

log = logging.getLogger("rlaif.sft")


@dataclass
class SFTConfig:
    model: str = field("smollm2-135m-instruct", help="model to fine-tune: built-in name, folder, .gguf or hub id")
    data: str = field("builtin:demo-train", help="JSONL or `datasets` save_to_disk folder of {prompt | messages, "
                      "completion} or {prompt, chosen, rejected} rows; builtin:demo-train = prompt + reference")
    eval_data: str | None = field(None, help="held-out rows in the same formats (None = eval_fraction of data)")
    eval_fraction: float = field(0.0, help="fraction of `data` held out (seeded by run.seed) when eval_data is "
                                 "None; 0 = no held-out loss")
    eval_every: int = field(50, help="held-out loss every N optimizer steps (also before the first and after "
                            "the last); 0 = only before and after")
    eval_batch_size: int = field(8, help="rows per held-out forward pass")
    max_length: int = field(1024, help="tokens per example; longer prompts lose tokens on the left so the answer "
                            "fits, an answer that alone does not fit is cut on the right (both counted)")
    epochs: int = field(1, help="passes over the training rows (ignored when max_steps > 0)")
    max_steps: int = field(0, help="optimizer steps to run; 0 = epochs x ceil(rows / batch)")
    micro_batch_size: int = field(4, help="rows per forward/backward")
    gradient_accumulation_steps: int = field(8, help="micro-batches per optimizer step (the seeds' 4 x 8)")
    learning_rate: float = field(9e-6, help="peak AdamW learning rate (the seed's)")
    min_lr_ratio: float = field(0.3, help="cosine floor as a fraction of the peak (the seed's 30 %); 1 = constant")
    warmup_steps: int = field(0, help="linear warm-up steps before the cosine decay")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    max_grad_norm: float = field(1.0, help="gradient clipping (global norm)")
    gradient_checkpointing: bool = field(False, help="trade compute for activation memory (long sequences on GPU)")
    checkpoint_every: int = field(50, help="resumable checkpoint every N optimizer steps and at the end "
                                  "(0 = never)")

    def validate(self) -> None:
        check_training_fields(self, "sft")
        if self.max_length < 2:
            raise ConfigError("config key 'sft.max_length': must be >= 2 (a prompt token and an answer token)")


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


class BatchStream:
    """Epochs of seeded shuffles; a step takes up to `batch` rows and never crosses an epoch's end.

    `(epoch, offset)` is all a resume needs.
    """

    def __init__(self, n: int, batch: int, seed: int, epoch: int = 0, offset: int = 0):
        self.n, self.batch, self.seed, self.epoch, self.offset = n, batch, seed, epoch, offset

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch)

    def take(self) -> list[int]:
        idx = self._order(self.epoch)[self.offset:self.offset + self.batch]
        self.offset += len(idx)
        if self.offset >= self.n:
            self.epoch, self.offset = self.epoch + 1, 0
        return idx

    @property
    def progress(self) -> float:
        return self.epoch + self.offset / self.n


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


def save_model(model, tokenizer, folder: Path) -> None:
    """The final model with its tokenizer (Hugging Face format), written atomically by the main process while
    the others wait (a sharded model's weights gathered first). sft, rm and dpo."""
    state = distributed.full_model_state(model)
    if distributed.is_main():
        with atomic_dir(folder) as tmp:
            distributed.save_pretrained(model, tmp, state)
            tokenizer.save_pretrained(tmp)
    distributed.barrier()


def write_checkpoint(folder: Path, model, opt_state: dict, state: dict, rng: dict | None = None,
                     model_state: dict | None = None) -> None:
    """A resumable checkpoint: the model (HF format in `model/`), AdamW state, RNG state(s), trainer state.
    `model_state`: a sharded model's gathered weights (`distributed.full_model_state`)."""
    distributed.save_pretrained(model, folder / "model", model_state)
    torch_save(opt_state, folder / "optimizer.pt")
    torch_save(rng if rng is not None else rng_state(), folder / "rng.pt")
    save_json(folder / "trainer_state.json", state)


def save_step_checkpoint(out: Path, step: int, model, opt, state: dict, keep: int, save=None) -> None:
    """Every process's RNG state gathered, the checkpoint written by the main process, the others waiting.
    `save`: the calling stage's `save_checkpoint` (looked up there, so a test can wrap it per stage)."""
    rng = distributed.gather_rng_states(rng_state())
    opt_state = distributed.optimizer_state(opt, model)  # gathered from every process when sharded
    model_state = distributed.full_model_state(model)
    if distributed.is_main():
        (save or save_checkpoint)(
            out, step, lambda folder: write_checkpoint(folder, model, opt_state, state, rng, model_state), keep)
    distributed.barrier()


# ---------------------------------------------------------------------------------------------------------
# the loop


def restore_trainer_state(ckpt, opt, stream: BatchStream, total: int, log: logging.Logger, model) -> int:
    """Resume sft/rm/dpo from `ckpt`: optimizer moments, RNG states and the data position; returns the step.
    A run resumed with another planned length recomputes its learning-rate schedule (warned)."""
    distributed.load_optimizer_state(opt, torch_load(ckpt / "optimizer.pt"), model)
    state = load_json(ckpt / "trainer_state.json")
    rng = distributed.my_rng_state(torch_load(ckpt / "rng.pt"))
    if rng is not None:
        set_rng_state(rng)
    stream.epoch, stream.offset = state["epoch"], state["offset"]
    if state.get("total_steps") != total:
        log.warning("resuming a run planned for %s steps with %d steps: the schedule is recomputed",
                    state.get("total_steps"), total)
    log.info("resumed from %s (step %d)", ckpt, state["step"])
    return int(state["step"])


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
    if run.fsdp:
        distributed.shard_model(model)  # weights, gradients and moments: 1/N per process
    opt = distributed.make_adamw(model.parameters(), shard_state=run.shard_optimizer, lr=cfg.learning_rate,
                                 weight_decay=cfg.weight_decay)
    opt = distributed.use_deepspeed(model, opt, cfg.max_grad_norm)  # when the launch asked for DeepSpeed
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
            save_step_checkpoint(out, step + 1, model, opt, state, run.keep_checkpoints)
    bar.close()
    metrics.close()
    final = out / "model"
    save_model(model, tokenizer, final)
    return final


__all__ = ["SFTConfig", "train", "build_data", "evaluate", "BatchStream"]
