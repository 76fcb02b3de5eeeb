"""ZeRO stage 1 (`run.shard_optimizer=true`): torch's `ZeroRedundancyOptimizer` keeps each parameter's AdamW
moments in one process. Called through `rlaif.distributed`, never by a stage directly."""

from __future__ import annotations

import torch

from .process_group import is_main


def make_adamw(params, **kwargs) -> torch.optim.Optimizer:
    """Each process keeps the AdamW moments of about 1/N of the parameters, steps those with the all-reduced
    gradients and broadcasts them, so replicas stay identical and the update is AdamW's."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, **kwargs)


def is_zero1(opt: torch.optim.Optimizer) -> bool:
    return type(opt).__name__ == "ZeroRedundancyOptimizer"


def optimizer_state(opt: torch.optim.Optimizer) -> dict | None:
    """The whole state, consolidated on the main process (None elsewhere); a collective."""
    opt.consolidate_state_dict(to=0)
    return opt.state_dict() if is_main() else None
