"""FSDP2 (torch's `fully_shard`, `run.fsdp=true`): weights, gradients and AdamW moments sharded over the
processes (ZeRO stage 3 without DeepSpeed). Called through `rlaif.distributed`, never by a stage directly."""

from __future__ import annotations

import contextlib

import torch

from .process_group import is_dtensor, is_main, world


def shard_model(model: torch.nn.Module) -> bool:
    """Shard `model` over the processes with torch's FSDP2 (`fully_shard`): each decoder layer (the classes in
    the model's `_no_split_modules`) is one unit, the rest (embeddings, final norm, head) the root unit. Every
    process then holds 1/N of the weights; a layer's weights are gathered for its forward and backward and
    freed after. Gradients are reduce-scattered as SUMS (our losses are already divided by the global token
    count), so the update equals the single-process one. A no-op with one process (returns False)."""
    if not world().enabled:
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


def is_sharded(model: torch.nn.Module | None) -> bool:
    """Whether `model` holds FSDP-sharded parameters (itself sharded, or containing a sharded module, as the
    policy + shared value head pair does)."""
    if model is None or not world().enabled:
        return False
    return any(is_dtensor(p) for p in model.parameters())


@contextlib.contextmanager
def gathered_for_generation(model: torch.nn.Module):
    """Every unit all-gathered once on entry, freed on exit (see `rlaif.distributed.gathered_for_generation`)."""
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


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict:
    """The sharded model's whole state dict on the main process (a collective; the others get {})."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    reshard(model)
    return get_model_state_dict(model, options=_full_options())


def load_model_state(model: torch.nn.Module, sd: dict) -> tuple[list[str], list[str]]:
    """Load a whole state dict into the sharded model (each process keeps its part): (missing, unexpected)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    result = set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=False))
    return result.missing_keys, result.unexpected_keys


def optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict | None:
    """The whole AdamW state keyed by parameter name on the main process (None elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    reshard(model)
    state = get_optimizer_state_dict(model, opt, options=_full_options())
    return state if is_main() else None


def load_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Each process takes its part of a name-keyed whole AdamW state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    reshard(model)
    set_optimizer_state_dict(model, opt, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """`clip_grad_norm_` over the trainable parameters; the total norm as a plain tensor. Sharded (DTensor) and
    plain parameters may be mixed (a sharded policy + its replicated value head): the norm is taken over both."""
    params = [p for p in model.parameters() if p.requires_grad]
    sharded = [p for p in params if is_dtensor(p)]
    if not sharded or len(sharded) == len(params):
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    plain = [p for p in params if not is_dtensor(p)]
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
