"""What the step-based training stages (sft, rm, dpo) share: the seeded batch order, the model's optimizer
under whichever data-parallel backend the launch asked for, resumable step checkpoints, the final save."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from .. import distributed
from ..checkpoint import atomic_dir, load_json, save_json, torch_load, torch_save
from ..runtime import RunConfig, rng_state, set_rng_state


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


def optimizer_for(model: torch.nn.Module, run: RunConfig, learning_rate: float, weight_decay: float,
                  max_grad_norm: float) -> torch.optim.Optimizer:
    """AdamW for `model` on the launch's backend: `run.fsdp` shards the model first (weights, gradients and
    moments: 1/N per process), `run.shard_optimizer` the moments only (ZeRO-1), a DeepSpeed launch wraps both
    in its engine (ZeRO-2/3); plain replicas otherwise."""
    if run.fsdp:
        distributed.shard_model(model)
    opt = distributed.make_adamw(model.parameters(), shard_state=run.shard_optimizer, lr=learning_rate,
                                 weight_decay=weight_decay)
    return distributed.use_deepspeed(model, opt, max_grad_norm)


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


def save_step_checkpoint(out: Path, step: int, model, opt, state: dict, keep: int, save) -> None:
    """Every process's RNG state gathered, the checkpoint written by the main process, the others waiting.
    `save`: the calling stage's `save_checkpoint` (looked up there, so a test can wrap it per stage)."""
    rng = distributed.gather_rng_states(rng_state())
    opt_state = distributed.optimizer_state(opt, model)  # gathered from every process when sharded
    model_state = distributed.full_model_state(model)
    if distributed.is_main():
        save(
            out, step, lambda folder: write_checkpoint(folder, model, opt_state, state, rng, model_state), keep)
    distributed.barrier()


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


__all__ = ["BatchStream", "optimizer_for", "restore_trainer_state", "save_model", "save_step_checkpoint",
           "write_checkpoint"]
