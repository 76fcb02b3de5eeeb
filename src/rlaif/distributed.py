"""Data parallel over processes started by `accelerate launch` (or `torchrun`): one process per device.

Every process holds a full replica of the trained models, works on its shard of each batch and takes the same
optimizer step: gradients are SUMMED over processes before clipping (losses are already divided by the token
count of the GLOBAL minibatch, so the sum is the single-process gradient). Statistics that span the batch
(advantage and reward whitening, the KL the controller sees, logged means) are reduced over all processes, so
a run's math does not depend on how many processes share it. Batch sizes in the YAML are global.

With one process (no WORLD_SIZE in the environment) every function here is a no-op and nothing is imported
beyond torch.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass

import torch

from .deepspeed_zero import engine_of as _engine
from .deepspeed_zero import has_partitioned_weights, is_partitioned

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


def check_launcher_env() -> None:
    """Refuse what `accelerate launch` asks of an `Accelerator` that rlaif does not build.

    An accelerate config with FSDP or Megatron-LM only sets ACCELERATE_USE_* for the launched script to read;
    rlaif's own loop would ignore them and train whole replicas while the user believes the models are sharded.
    A DeepSpeed config is read (rlaif.deepspeed_zero; its checks are `check_launch`).
    `--mixed_precision` is only warned about: rlaif takes its precision from `run.precision`."""
    from .config import ConfigError

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


# ---------------------------------------------------------------------------------------------------------
# replicas


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
            if _is_dtensor(t):
                continue
            buf = t.data.to(dev)
            dist.broadcast(buf, src=0)
            if buf.data_ptr() != t.data.data_ptr():
                t.data.copy_(buf)


def backward(loss: torch.Tensor, model: torch.nn.Module) -> None:
    """`loss.backward()`, through DeepSpeed's engine when DeepSpeed trains `model` (`use_deepspeed`)."""
    engine = _engine(model)
    if engine is None:
        loss.backward()
    else:
        from .deepspeed_zero import backward as engine_backward

        engine_backward(engine, loss, _WORLD.size)


def use_deepspeed(model: torch.nn.Module, opt: torch.optim.Optimizer, max_grad_norm: float,
                  parts: tuple[torch.nn.Module, ...] = ()):
    """`opt` as it is, or, when `accelerate launch` asked for DeepSpeed and there are several processes,
    DeepSpeed's ZeRO optimizer around `model` and `opt` (rlaif.deepspeed_zero; `parts`: submodules of `model`
    also called on their own). The stage then goes on calling this module's functions, which route through the
    engine."""
    from .deepspeed_zero import initialize, plan_from_env

    plan = plan_from_env()
    if plan is None:
        return opt
    if not _WORLD.enabled:
        log.warning("DeepSpeed launch with one process: plain training (nothing to shard over)")
        return opt
    log.info("DeepSpeed ZeRO stage %d over %d processes (optimizer offload: %s, weight offload: %s)",
             plan.stage, _WORLD.size, plan.offload_optimizer, plan.offload_param)
    return initialize(model, opt, plan, max_grad_norm, parts)


def all_reduce_gradients(model: torch.nn.Module) -> None:
    """Sum every trainable parameter's gradient over processes (missing gradients count as zeros, so every
    process reduces the same buffers). One flat buffer per dtype. Parameters sharded by FSDP are skipped: their
    gradients are already summed (reduce-scattered in the backward pass)."""
    if not _WORLD.enabled or _engine(model) is not None:  # DeepSpeed reduces in its own step
        return
    dist = _dist()
    params = [p for p in model.parameters() if p.requires_grad and not _is_dtensor(p)]
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


# ---------------------------------------------------------------------------------------------------------
# FSDP (torch's fully_shard): weights, gradients and AdamW moments sharded over processes (ZeRO stage 3)


def shard_model(model: torch.nn.Module) -> bool:
    """Shard `model` over the processes with torch's FSDP2 (`fully_shard`): each decoder layer (the classes in
    the model's `_no_split_modules`) is one unit, the rest (embeddings, final norm, head) the root unit. Every
    process then holds 1/N of the weights; a layer's weights are gathered for its forward and backward and
    freed after. Gradients are reduce-scattered as SUMS (our losses are already divided by the global token
    count), so the update equals the single-process one. A no-op with one process (returns False)."""
    if not _WORLD.enabled:
        return False
    from torch.distributed.fsdp import fully_shard

    unit_names = set(getattr(model, "_no_split_modules", None) or [])
    units = [m for m in model.modules() if type(m).__name__ in unit_names]
    if not units:
        raise ValueError(f"run.fsdp: {type(model).__name__} names no decoder-layer class (_no_split_modules) to "
                         "shard by")
    for unit in [*units, model]:
        fully_shard(unit)
        unit.set_gradient_divide_factor(1.0)  # per unit: the root's setting does not reach the layers
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no PREMUL_SUM
    return True


def _is_dtensor(t: torch.Tensor) -> bool:
    return hasattr(t, "to_local") and hasattr(t, "device_mesh")


def holds_partitions(model: torch.nn.Module | None) -> bool:
    """Whether each process holds only part of `model`'s weights (FSDP or DeepSpeed ZeRO-3): checks over its
    weights must then be combined over processes."""
    return is_sharded(model) or has_partitioned_weights(model)


def is_sharded(model: torch.nn.Module | None) -> bool:
    """Whether `model` holds FSDP-sharded parameters (itself sharded, or containing a sharded module, as the
    policy + shared value head pair does)."""
    if model is None or not _WORLD.enabled:
        return False
    return any(_is_dtensor(p) for p in model.parameters())


@contextlib.contextmanager
def gathered_for_generation(model: torch.nn.Module):
    """Inside the block every process holds the whole of a sharded `model` (each unit all-gathered once on
    entry, freed on exit) and its forward passes communicate nothing. For `generate`: processes run different
    numbers of forward passes (their answers end at different steps), so per-pass gathers would deadlock.
    The price is the full model in each process's memory while sampling, as ZeRO-3 generation has. A model
    that is not sharded: nothing happens."""
    if _engine(model) is not None:  # DeepSpeed ZeRO-3 (ZeRO-2: whole weights, nothing to do)
        from .deepspeed_zero import gathered_for_generation as gathered

        with gathered(model):
            yield
        return
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for u in units:
        u.unshard()
        u.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for u in units:
            u.set_reshard_after_forward(u is not model, recurse=False)  # fully_shard's default: root False
        reshard(model)


def reshard(model: torch.nn.Module) -> None:
    """Put a sharded model back in its sharded state. After a forward pass without a backward (evaluation,
    scoring) FSDP leaves the root unit's weights gathered, and its parameters are then other tensor objects
    than the optimizer's; the state-dict functions below need the sharded ones."""
    if is_sharded(model):
        from torch.distributed.fsdp import FSDPModule

        for m in model.modules():
            if isinstance(m, FSDPModule):
                m.reshard()


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (DTensor, or DeepSpeed ZeRO-3) parameter or gradient; any other tensor
    as it is."""
    if is_partitioned(t):
        return t.ds_tensor
    return t.to_local() if hasattr(t, "to_local") else t


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict | None:
    """A sharded model's whole state dict on the main process (a collective: every process calls it; the
    others get {}); None for a model that is not sharded (save it as it is)."""
    if has_partitioned_weights(model):  # DeepSpeed ZeRO-3
        from .deepspeed_zero import full_model_state as gathered

        return gathered(model)
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard(model)
    return get_model_state_dict(model, options=_full_options())


def save_pretrained(model, folder, state: dict | None) -> None:
    """`model.save_pretrained(folder)`, from `state` (full_model_state) when the model is sharded. A tied
    weight is written once, under its first name, as `save_pretrained` writes an unsharded model."""
    if state is None:
        model.save_pretrained(folder)
        return
    first: dict[int, str] = {}
    tied = {n for n, p in model.named_parameters(remove_duplicate=False) if first.setdefault(id(p), n) != n}
    model.save_pretrained(folder, state_dict={k: v for k, v in state.items() if k not in tied})


def trained_state_gib(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    """GiB this process holds of `model`'s parameters and `opt`'s state (AdamW moments): its shards when sharded
    (run.fsdp, run.shard_optimizer, DeepSpeed), everything otherwise. Gradients are not counted (freed after each
    step)."""
    if _engine(model) is not None:
        from .deepspeed_zero import local_tensors

        tensors = local_tensors(model, opt)
    else:
        tensors = [local(p.detach()) for p in model.parameters()]
        inner = getattr(opt, "optim", opt)  # ZeroRedundancyOptimizer keeps its part in its own AdamW
        tensors += [local(t) for st in inner.state.values() for t in st.values() if torch.is_tensor(t)]
    seen, total = set(), 0
    for t in tensors:
        if t.data_ptr() not in seen:  # tied weights once
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total / 2**30


def lockstep_chunks(mine: list, size: int, filler, model: torch.nn.Module) -> list[tuple[list, float]]:
    """This process's items in chunks of `size`, each with its loss weight 1.0. The processes of a sharded
    `model` must run the same number of forward (and backward) passes, since each pass gathers weights from all
    of them: a process with fewer chunks than the busiest adds passes over [`filler`] with weight 0.0 (their
    results must be multiplied by the weight, or skipped)."""
    chunks = [(mine[s:s + size], 1.0) for s in range(0, len(mine), size)]
    if is_sharded(model) or _engine(model) is not None:  # DeepSpeed reduces in every backward
        most = int(all_reduce_floats([float(len(chunks))], op="max")[0])
        chunks += [([filler], 0.0)] * (most - len(chunks))
    return chunks


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` over the trainable parameters; the total norm as a plain tensor. Sharded (DTensor) and
    plain parameters may be mixed (a sharded policy + its replicated value head): the norm is taken over both."""
    params = [p for p in model.parameters() if p.requires_grad]
    sharded = [p for p in params if _is_dtensor(p)]
    if not sharded or len(sharded) == len(params):
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    plain = [p for p in params if not _is_dtensor(p)]
    norms = []  # one norm per kind: DTensor and plain gradients cannot meet in one foreach call
    for group in (sharded, plain):
        n = torch.nn.utils.get_total_norm([p.grad for p in group if p.grad is not None])
        norms.append((n.full_tensor() if hasattr(n, "full_tensor") else n).float().cpu())
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = min(1.0, max_norm / (float(total) + 1e-6))  # clip_grad_norm_'s coefficient
    if coef < 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(coef)
    return total


def make_adamw(params, *, shard_state: bool = False, **kwargs) -> torch.optim.Optimizer:
    """AdamW over `params` (tensors or param-group dicts). With `shard_state` and N > 1 processes: ZeRO stage 1
    (torch's `ZeroRedundancyOptimizer`): each process keeps the AdamW moments of about 1/N of the parameters,
    steps those with the all-reduced gradients and broadcasts them, so replicas stay identical and the update is
    AdamW's; the moments' memory per process drops from 8 bytes per parameter to about 8/N.

    torch's fused AdamW kernel (the same update, one pass over each tensor): on a 2-core CPU it steps the 135M
    SmolLM2 in 0.08 s where the default for-each implementation takes 0.36 s."""
    kwargs.setdefault("fused", True)
    if shard_state and _WORLD.enabled:
        from torch.distributed.optim import ZeroRedundancyOptimizer

        return ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def optimizer_state(opt: torch.optim.Optimizer, model: torch.nn.Module | None = None) -> dict | None:
    """The whole state dict of `opt` on the main process, as an unsharded AdamW's (None elsewhere). A collective
    for a sharded optimizer (`make_adamw(shard_state=True)`) or a sharded `model` (`shard_model`; the state is
    then keyed by parameter name; DeepSpeed's too): every process must call it."""
    if _engine(model) is not None:
        from .deepspeed_zero import optimizer_state as gathered

        return gathered(model, opt)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        reshard(model)
        state = get_optimizer_state_dict(model, opt, options=_full_options())
        return state if is_main() else None
    if type(opt).__name__ == "ZeroRedundancyOptimizer":
        opt.consolidate_state_dict(to=0)
        return opt.state_dict() if is_main() else None
    return opt.state_dict()

def load_optimizer_state(opt: torch.optim.Optimizer, state: dict, model: torch.nn.Module) -> None:
    """Load a state saved by `optimizer_state`: keyed by parameter name (saved from a sharded model) or by
    index (any other); each process takes the part it holds."""
    if _engine(model) is not None:
        from .deepspeed_zero import load_optimizer_state as scatter

        scatter(model, opt, state)
    elif any(isinstance(k, str) for k in state.get("state", {})):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        reshard(model)
        set_optimizer_state_dict(model, opt, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(state)


def parameter_fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """(n_trainable, 3) float64: per trainable parameter its sum, L2 norm and first element (no copies).
    FSDP-sharded parameters are left out: each process holds a different part of them by design."""
    with torch.no_grad():
        rows = [torch.stack([p.sum(dtype=torch.float64), torch.linalg.vector_norm(p, dtype=torch.float64),
                             p.reshape(-1)[0].double()])
                for p in model.parameters() if p.requires_grad and not _is_dtensor(p) and not is_partitioned(p)]
    return torch.stack(rows).cpu() if rows else torch.zeros(0, 3, dtype=torch.float64)


def check_replicas(model: torch.nn.Module, what: str) -> None:
    """Raise when the processes' copies of `model` differ (they must be bit-identical after each step). Sharded
    parameters have no copies to compare."""
    if not _WORLD.enabled:
        return
    prints = all_gather_object(parameter_fingerprint(model))
    if any(not torch.equal(prints[0], p) for p in prints[1:]):
        raise RuntimeError(f"{what}: parameters differ across processes after an optimizer step "
                           f"(fingerprints {[p.tolist() for p in prints]})")


# ---------------------------------------------------------------------------------------------------------
# batch statistics over every process


def masked_mean_var(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, unbiased variance and count of x over the masked positions of EVERY process (two passes: the
    global mean first, then the squared deviations from it). Shapes: x, mask (b, t) -> three scalars."""
    from . import ops

    xd = x.double()
    sums = all_reduce(torch.stack([ops.masked_sum(xd, mask), ops.masked_sum(torch.ones_like(xd), mask)]))
    n = sums[1]
    mean = sums[0] / n.clamp(min=1)
    var = all_reduce(ops.masked_sum((xd - mean) ** 2, mask)) / (n - 1).clamp(min=1)
    return mean.to(x.dtype), var.to(x.dtype), n


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """`rlaif.ops.whiten` with the statistics of the global batch (the same function with one process)."""
    from . import ops

    if not _WORLD.enabled:
        return ops.whiten(x, mask, shift_mean=shift_mean, eps=eps)
    mean, var, _ = masked_mean_var(x, mask)
    return ops.whiten_with(x, mask, mean, var, shift_mean=shift_mean, eps=eps)


def masked_count(mask: torch.Tensor) -> float:
    """Masked elements over every process."""
    return float(all_reduce(mask.sum().double()))


# ---------------------------------------------------------------------------------------------------------
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
