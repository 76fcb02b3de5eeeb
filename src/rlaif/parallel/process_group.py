"""The process group of a data-parallel run: who is who, and the collectives every backend and stage uses.

Processes are started by `accelerate launch` (or `torchrun`), one per device. Statistics that span the batch
(advantage and reward whitening, the KL the controller sees, logged means) are reduced over all processes, so a
run's math does not depend on how many processes share it. Batch sizes in the YAML are global.

With one process (no WORLD_SIZE in the environment) every function here is a no-op and nothing is imported
beyond torch. The lowest layer of `rlaif.parallel`: it imports no other rlaif module at import time.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger("rlaif.distributed")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_WORLD = World()


_WORLD = World()


def world() -> World:
    return _WORLD

def is_main() -> bool:
    return _WORLD.is_main

def init_from_env(device_choice: str = "auto") -> World:
    """Join the process group the launcher described (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    gloo on CPU, nccl on CUDA (each process on cuda:LOCAL_RANK). Idempotent; a single process returns World()."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _WORLD
    import torch.distributed as dist

    use_cuda = device_choice != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    _WORLD = World(dist.get_rank(), dist.get_world_size(), local)
    if _WORLD.is_main:
        log.info("data parallel: %d processes (%s)", _WORLD.size, dist.get_backend())
    else:  # one console log per run: the other processes only warn
        logging.getLogger("rlaif").setLevel(logging.WARNING)
    return _WORLD

def shutdown() -> None:
    """Leave the process group at the end of a run (a no-op with one process). A gloo group left for the
    interpreter's exit to tear down can abort the process while its threads still run ("terminate called without
    an active exception", exit -6): seen once in CI after an FSDP run had written everything."""
    global _WORLD
    if _WORLD.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _WORLD = World()


LAUNCHER_PLUGINS = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}

LAUNCHER_PLUGINS = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def check_launcher_env() -> None:
    """Refuse what `accelerate launch` asks of an `Accelerator` that rlaif does not build.

    An accelerate config with FSDP or Megatron-LM only sets ACCELERATE_USE_* for the launched script to read;
    rlaif's own loop would ignore them and train whole replicas while the user believes the models are sharded.
    A DeepSpeed config is read (rlaif.parallel.deepspeed_zero; its checks are `check_launch`).
    `--mixed_precision` is only warned about: rlaif takes its precision from `run.precision`."""
    from ..config import ConfigError

    for var, what in LAUNCHER_PLUGINS.items():
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise ConfigError(
                f"launcher: accelerate asked for {what} ({var}=true), which rlaif does not implement (every process "
                f"holds whole replicas of the models it trains); launch without the {what} config. "
                "run.shard_optimizer=true shards the AdamW moments over the processes (ZeRO stage 1), run.fsdp=true "
                "the weights too (FSDP2); configs/accelerate/deepspeed-zero2.yaml and -zero3.yaml launch DeepSpeed")
    mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if mp not in ("no", ""):
        log.warning("accelerate launch --mixed_precision %s is not read: rlaif's precision is run.precision "
                    "(auto = bf16 autocast on GPU)", mp)

def _dist():
    import torch.distributed as dist

    return dist

def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if _dist().get_backend() == "nccl" else torch.device("cpu")

def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A reduced copy of `t` over all processes (sum | max | min); `t` itself unchanged. Any shape."""
    if not _WORLD.enabled:
        return t.clone()
    dist = _dist()
    out = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return out.to(t.device)

def all_reduce_floats(values: list[float], op: str = "sum") -> list[float]:
    if not _WORLD.enabled:
        return list(values)
    return all_reduce(torch.tensor(values, dtype=torch.float64), op).tolist()

def any_true(flag: bool) -> bool:
    """True on every process when it is True on one (decisions that gate collectives must agree)."""
    return bool(all_reduce_floats([float(flag)], "max")[0]) if _WORLD.enabled else flag

def barrier() -> None:
    if _WORLD.enabled:
        _dist().barrier()

def all_gather_object(obj) -> list:
    if not _WORLD.enabled:
        return [obj]
    out: list = [None] * _WORLD.size
    _dist().all_gather_object(out, obj)
    return out

def gather_rows(t: torch.Tensor, pad_value: float = 0) -> torch.Tensor:
    """Concatenate every process's rows (dim 0), in rank order; dim 1 is right-padded to the widest.
    (b_i, r_i, ...) per process -> (sum b_i, max r_i, ...). For metrics: goes through CPU objects."""
    if not _WORLD.enabled:
        return t
    parts = all_gather_object(t.detach().cpu())
    if t.dim() >= 2:
        width = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1]), value=pad_value)
                 for p in parts]
    return torch.cat(parts).to(t.device)

def shard(n: int, unit: int = 1) -> slice:
    """This process's contiguous slice of n items, cut in whole `unit`s (a prompt's group of answers)."""
    if not _WORLD.enabled:
        return slice(0, n)
    groups = n // unit
    per = groups // _WORLD.size
    return slice(_WORLD.rank * per * unit, (_WORLD.rank + 1) * per * unit)

def my_items(items: list) -> list:
    """Every N-th item from this process's rank: a step's rows split over processes, whatever their number."""
    return items[_WORLD.rank::_WORLD.size] if _WORLD.enabled else items

def gather_items(t: torch.Tensor, n: int) -> torch.Tensor:
    """Undo `my_items`: every process's (n_i, ...) results of its every-N-th items -> (n, ...) in item order."""
    if not _WORLD.enabled:
        return t
    parts = all_gather_object(t.detach().cpu())
    out = torch.empty((n, *t.shape[1:]), dtype=t.dtype)
    for r, p in enumerate(parts):
        out[r::_WORLD.size] = p
    return out.to(t.device)


def is_dtensor(t: torch.Tensor) -> bool:
    """A DTensor: a parameter (or gradient) sharded by FSDP2."""
    return hasattr(t, "to_local") and hasattr(t, "device_mesh")


def broadcast_parameters(model: torch.nn.Module) -> None:
    """Copy rank 0's trainable parameters (and buffers) to every process: replicas start identical even when an
    initialisation drew random numbers (LoRA's A matrices). FSDP-sharded parameters are skipped (each process
    holds its own part of the same loaded weights)."""
    if not _WORLD.enabled:
        return
    dist = _dist()
    dev = _comm_device()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if is_dtensor(t):
                continue
            buf = t.data.to(dev)
            dist.broadcast(buf, src=0)
            if buf.data_ptr() != t.data.data_ptr():
                t.data.copy_(buf)


def all_reduce_gradients(model: torch.nn.Module) -> None:
    """Sum every trainable parameter's gradient over processes (missing gradients count as zeros, so every
    process reduces the same buffers). One flat buffer per dtype. Parameters sharded by FSDP are skipped: their
    gradients are already summed (reduce-scattered in the backward pass)."""
    if not _WORLD.enabled:
        return
    dist = _dist()
    params = [p for p in model.parameters() if p.requires_grad and not is_dtensor(p)]
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        by_dtype.setdefault(p.dtype, []).append(p)
    dev = _comm_device()
    for group in by_dtype.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dev) for p in group])
        dist.all_reduce(flat)
        offset = 0
        for p in group:
            n = p.numel()
            g = flat[offset:offset + n].view_as(p).to(p.device)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            offset += n


# batch statistics over every process


def masked_mean_var(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, unbiased variance and count of x over the masked positions of EVERY process (two passes: the
    global mean first, then the squared deviations from it). Shapes: x, mask (b, t) -> three scalars."""
    from .. import ops

    xd = x.double()
    sums = all_reduce(torch.stack([ops.masked_sum(xd, mask), ops.masked_sum(torch.ones_like(xd), mask)]))
    n = sums[1]
    mean = sums[0] / n.clamp(min=1)
    var = all_reduce(ops.masked_sum((xd - mean) ** 2, mask)) / (n - 1).clamp(min=1)
    return mean.to(x.dtype), var.to(x.dtype), n

def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """`rlaif.ops.whiten` with the statistics of the global batch (the same function with one process)."""
    from .. import ops

    if not _WORLD.enabled:
        return ops.whiten(x, mask, shift_mean=shift_mean, eps=eps)
    mean, var, _ = masked_mean_var(x, mask)
    return ops.whiten_with(x, mask, mean, var, shift_mean=shift_mean, eps=eps)

def masked_count(mask: torch.Tensor) -> float:
    """Masked elements over every process."""
    return float(all_reduce(mask.sum().double()))


# RNG streams


def gather_rng_states(local_state: dict) -> dict:
    """What a checkpoint stores: the state itself with one process, every process's state with several."""
    if not _WORLD.enabled:
        return local_state
    return {"per_process": all_gather_object(local_state)}

def my_rng_state(saved: dict) -> dict | None:
    """This process's RNG state from a checkpoint's; None when it was written with a different process count."""
    if "per_process" not in saved:
        return saved if not _WORLD.enabled else None
    states = saved["per_process"]
    return states[_WORLD.rank] if len(states) == _WORLD.size else None
