"""One optimizer step, the same in every training stage, with plain data parallel, FSDP or DeepSpeed."""

from __future__ import annotations

import torch

from . import distributed
from .finite import check_finite_weights


def optimizer_step(opt, model: torch.nn.Module, max_norm: float, what: str) -> float:
    """1) sum the gradients over processes, 2) clip them to `max_norm`, 3) AdamW, 4) zero them, 5) check the
    weights are finite and 6) the processes' replicas identical. Returns the global gradient norm before
    clipping. A non-finite norm raises FloatingPointError with nothing stepped; weights the update made
    non-finite raise too (the caller adds its step number and saves nothing). `what` names the model in the
    replica check's message.

    Under DeepSpeed (`distributed.use_deepspeed`) steps 1-4 are the engine's `step()`, which skips the update
    on a non-finite norm."""
    norm = distributed.engine_step(model)
    by_engine = norm is not None
    if not by_engine:
        distributed.all_reduce_gradients(model)
        norm = distributed.clip_grad_norm(model, max_norm)
    if not torch.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        raise FloatingPointError(f"non-finite gradient norm {norm.item()}")
    if not by_engine:
        opt.step()
        opt.zero_grad(set_to_none=True)
    check_finite_weights(model)  # an update can overflow even from a finite gradient
    distributed.check_replicas(model, what)
    return float(norm)


__all__ = ["optimizer_step"]
