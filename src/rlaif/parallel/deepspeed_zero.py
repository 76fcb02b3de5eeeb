"""DeepSpeed ZeRO stage 2 or 3 for every training stage, when `accelerate launch` is given a DeepSpeed config.

`accelerate launch --config_file configs/accelerate/deepspeed-zero2.yaml -m rlaif.cli sft cfg.yaml` (or
`-zero3.yaml`) starts the processes with ACCELERATE_USE_DEEPSPEED and the ZeRO stage in the environment; the
training YAML is the same as for one process. The stage then hands its model and its AdamW to
`deepspeed.initialize` (ppo: the policy, with a shared value head, and a separate critic, each with its own):

- ZeRO-2: every process keeps whole weights; gradients are reduce-scattered and each process keeps the AdamW
  moments (and fp32 master copy) of 1/N of them. ZeRO-3: the weights are partitioned too and gathered layer by
  layer for each forward and backward pass; for sampling (ppo, grpo) the policy is gathered whole once per
  `generate` call, since the processes run different numbers of forward passes.
- The math stays rlaif's: our losses are divided by the token count of the GLOBAL batch, so each process's loss
  is multiplied by N before DeepSpeed's backward (DeepSpeed averages gradients over processes; we sum). The
  micro-batches of an optimizer step are ours (DeepSpeed's `managed_gradient_accumulation: false`: backward
  accumulates, `step` reduces and updates), and DeepSpeed clips at the stage's max_grad_norm.
- Precision stays `run.precision` (autocast over fp32 weights): DeepSpeed's own bf16/fp16 are not turned on.
- Checkpoints are rlaif's: the whole model in Hugging Face format and every parameter's AdamW moments keyed by
  parameter name (gathered with DeepSpeed's tensor-fragment API), the format FSDP checkpoints use, so a run
  may resume with or without DeepSpeed, with any process count.

DeepSpeed is imported only when a launch asks for it (`pip install 'rlaif[deepspeed]'`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .process_group import is_main, world

# the optimizer-state keys of torch's AdamW besides "step"
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass(frozen=True)
class DeepSpeedPlan:
    stage: int  # 2 or 3
    offload_optimizer: str = "none"  # none | cpu
    offload_param: str = "none"  # none | cpu (ZeRO-3 only)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def plan_from_env() -> DeepSpeedPlan | None:
    """What an accelerate DeepSpeed launch asked for; None for any other launch. Raises ConfigError for what
    rlaif does not do (a DeepSpeed JSON file of its own, ZeRO stage 0/1, NVMe offload)."""
    from ..config import ConfigError

    if not _env_true("ACCELERATE_USE_DEEPSPEED"):
        return None
    cfg_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if cfg_file and cfg_file.lower() != "none":
        raise ConfigError(f"launcher: deepspeed_config_file {cfg_file} is not read: rlaif builds DeepSpeed's "
                          "config from the training YAML; give zero_stage and offload_*_device in the accelerate "
                          "config instead (configs/accelerate/deepspeed-zero2.yaml)")
    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    if stage not in ("2", "3"):
        raise ConfigError(f"launcher: DeepSpeed zero_stage {stage}: rlaif runs ZeRO stage 2 or 3 under DeepSpeed "
                          "(stage 1 is run.shard_optimizer=true without DeepSpeed; stage 0 is a plain launch)")
    devices = {}
    for what, var in (("optimizer", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
                      ("param", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE")):
        devices[what] = os.environ.get(var, "none").lower() or "none"
        if devices[what] not in ("none", "cpu"):
            raise ConfigError(f"launcher: DeepSpeed offload_{what}_device {devices[what]}: rlaif offloads to the "
                              "CPU only (none | cpu)")
    if devices["param"] != "none" and stage != "3":
        raise ConfigError("launcher: DeepSpeed offload_param_device needs zero_stage 3")
    return DeepSpeedPlan(int(stage), devices["optimizer"], devices["param"])


def check_launch(run) -> DeepSpeedPlan | None:
    """The DeepSpeed plan of this launch (None without one), refused with a ConfigError next to rlaif's own
    sharding keys of `run` (RunConfig)."""
    from ..config import ConfigError

    plan = plan_from_env()
    if plan is None:
        return None
    if run.fsdp or run.shard_optimizer:
        key = "run.fsdp" if run.fsdp else "run.shard_optimizer"
        raise ConfigError(f"config key '{key}': the DeepSpeed launch already shards (ZeRO-{plan.stage}); drop "
                          f"{key} or launch without DeepSpeed")
    return plan


def _deepspeed():
    try:
        import deepspeed
    except ImportError as e:
        from ..config import ConfigError

        raise ConfigError("launcher: accelerate asked for DeepSpeed, which is not installed: "
                          "pip install 'rlaif[deepspeed]'") from e
    return deepspeed


def engine_config(plan: DeepSpeedPlan, max_grad_norm: float, world_size: int) -> dict:
    """DeepSpeed's config dict: our micro-batches, DeepSpeed's ZeRO, no DeepSpeed mixed precision."""
    zero: dict = {"stage": plan.stage}
    if plan.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": plan.offload_optimizer}
    if plan.offload_param != "none":
        zero["offload_param"] = {"device": plan.offload_param}
    return {
        # DeepSpeed insists on batch sizes; they only name one backward per process and step (not used by us)
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": world_size,
        "managed_gradient_accumulation": False,  # backward accumulates; step() reduces and updates
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch's AdamW
        "zero_force_ds_cpu_optimizer": False,  # torch's AdamW also when the optimizer state is offloaded
        "steps_per_print": 2**62, "wall_clock_breakdown": False,
    }


def initialize(model: torch.nn.Module, opt: torch.optim.Optimizer, plan: DeepSpeedPlan, max_grad_norm: float,
               parts: tuple[torch.nn.Module, ...] = ()):
    """Wrap `model` (trained in place: the engine's module is `model` itself) and its AdamW in a DeepSpeed engine;
    returns DeepSpeed's ZeRO optimizer, which stands in for `opt` (its param_groups are `opt`'s, so the stages'
    learning-rate schedule reaches it). The engine hangs on the model as `model.deepspeed_engine`, and on each of
    `parts`: submodules that are called on their own (a policy sampled from, saved, loaded without its value
    head)."""
    ds = _deepspeed()
    engine, zero_opt, _, _ = ds.initialize(model=model, optimizer=opt,
                                           config=engine_config(plan, max_grad_norm, world().size))
    for m in (model, *parts):  # a plain attribute, not a submodule (the engine holds the model: registered as
        object.__setattr__(m, "deepspeed_engine", engine)  # a child it would recurse)
    zero_opt.deepspeed_engine = engine
    return zero_opt


def engine_of(model: torch.nn.Module | None):
    return getattr(model, "deepspeed_engine", None) if model is not None else None


def backward(engine, loss: torch.Tensor, world_size: int) -> None:
    """Our loss (already over the global token count) through DeepSpeed's backward: times N, since DeepSpeed
    divides the reduced gradients by N."""
    engine.backward(loss * world_size, scale_wrt_gas=False)
    # what the engine's own forward does first: we call the module itself, so after each backward instead.
    # Without it ZeRO-3 never counts a micro-step and each backward's gradients replace the previous ones.
    engine.optimizer.clear_backward_seen_flag()


def step(engine) -> torch.Tensor:
    """Reduce, clip and step; the gradients' global norm before clipping (inf/NaN: DeepSpeed skipped the step)."""
    engine.step()
    norm = engine.get_global_grad_norm()
    return torch.as_tensor(float("nan") if norm is None else float(norm))


def is_partitioned(p: torch.Tensor) -> bool:
    """A weight partitioned by ZeRO-3: the tensor itself is empty, this process's part is `p.ds_tensor`."""
    return hasattr(p, "ds_id")


def local_tensors(model: torch.nn.Module, zero_opt) -> list[torch.Tensor]:
    """The tensors this process holds of `model` and its ZeRO optimizer: weights (their partitions under ZeRO-3),
    fp32 master partitions and AdamW moments."""
    out = [p.ds_tensor if is_partitioned(p) else p.detach() for p in model.parameters()]
    out += [p.detach() for p in _flat_partitions(zero_opt)]
    out += [t for st in zero_opt.optimizer.state.values() for t in st.values() if torch.is_tensor(t)]
    return out


@torch.no_grad()
def full_model_state(model: torch.nn.Module) -> dict | None:
    """ZeRO-3: the whole state dict on the main process ({} elsewhere; a collective: every process calls it).
    None under ZeRO-2, where every process holds the whole weights."""
    if not any(is_partitioned(p) for p in model.parameters()):
        return None
    ds = _deepspeed()
    with ds.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if is_main() else {}


def _flat_partitions(zero_opt) -> list[torch.Tensor]:
    """This process's flat fp32 master partitions, the tensors torch's AdamW steps (one per group or sub-group)."""
    flats = getattr(zero_opt, "single_partition_of_fp32_groups", None)  # ZeRO-2
    return list(flats if flats is not None else zero_opt.fp32_partitioned_groups_flat)  # ZeRO-3


def _named_groups(model: torch.nn.Module, zero_opt) -> list[tuple[int, list[tuple[str, torch.nn.Parameter]]]]:
    """The model's trained parameters by name, per ZeRO (sub-)group, with the index of their AdamW param group."""
    names = {id(p): n for n, p in model.named_parameters()}
    if hasattr(zero_opt, "bit16_groups"):  # ZeRO-2: one group per AdamW param group
        return [(i, [(names[id(p)], p) for p in group]) for i, group in enumerate(zero_opt.bit16_groups)]
    return [(zero_opt.sub_group_to_group_id[i], [(names[id(p)], p) for p in group])  # ZeRO-3: sub-groups
            for i, group in enumerate(zero_opt.fp16_groups)]


def _step_count(zero_opt) -> float:
    states = [st for st in zero_opt.optimizer.state.values() if "step" in st]
    return float(states[0]["step"]) if states else 0.0


def optimizer_state(model: torch.nn.Module, zero_opt) -> dict | None:
    """Every parameter's AdamW state keyed by parameter name, as FSDP's full optimizer state dict: {"state":
    {name: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [{hyper-parameters, "params": [names]}]}.
    A collective (each moment is assembled from every process's fragment); the main process gets it, the
    others None."""
    ds = _deepspeed()
    _link_fragments(zero_opt)
    step = torch.tensor(_step_count(zero_opt))
    state: dict = {}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": []} for g in zero_opt.optimizer.param_groups]
    for group_id, named in _named_groups(model, zero_opt):
        for name, p in named:
            moments = {k: ds.utils.safe_get_full_optimizer_state(p, k) for k in ADAM_MOMENTS}
            if all(m is not None for m in moments.values()):
                state[name] = {"step": step.clone(),
                               **{k: m.detach().float().cpu().clone() for k, m in moments.items()}}
            groups[group_id]["params"].append(name)
    return {"state": state, "param_groups": groups} if is_main() else None


def load_optimizer_state(model: torch.nn.Module, zero_opt, saved: dict) -> None:
    """Load a name-keyed AdamW state (`optimizer_state`, or an FSDP checkpoint's) into the ZeRO partitions: each
    process takes its fragment of every moment. An index-keyed state (a checkpoint of plain data parallel) is
    first mapped to names by the order of the model's trained parameters."""
    ds = _deepspeed()
    state = saved["state"]
    if state and not any(isinstance(k, str) for k in state):
        order = [n for n, p in model.named_parameters() if p.requires_grad]
        index = [i for g in saved["param_groups"] for i in g["params"]]
        state = {order[pos]: state[i] for pos, i in enumerate(index) if i in state}
    _materialise_adam_state(zero_opt)
    steps = set()
    for _, named in _named_groups(model, zero_opt):
        for name, p in named:
            if name not in state:
                raise KeyError(f"checkpoint's optimizer state has no moments for {name}")
            for k in ADAM_MOMENTS:
                if is_partitioned(p):
                    _set_partition_of(p, state[name][k], k)
                else:
                    ds.utils.safe_set_full_optimizer_state(p, state[name][k].to(torch.float32), k)
            steps.add(float(state[name]["step"]))
    for st in zero_opt.optimizer.state.values():  # one step count for every flat partition
        if steps:
            st["step"].fill_(max(steps))


def _set_partition_of(p: torch.nn.Parameter, value: torch.Tensor, key: str) -> None:
    """ZeRO-3: this process's part of the whole AdamW state `value` of weight `p`. DeepSpeed's own
    `safe_set_full_optimizer_state` (0.19.8) cuts the partition out of the unpadded tensor, which fails for a
    weight smaller than the process count (the last process's partition is all padding: a value head's bias)."""
    z3 = p._z3_optimizer
    part, _ = z3._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)
    start = part.numel() * z3._get_param_partition_rank(p)
    mine = value.flatten()[start:start + part.numel()].to(part.dtype)
    part.data.zero_()
    part.data[:mine.numel()].copy_(mine)


def _materialise_adam_state(zero_opt) -> None:
    """torch's AdamW creates its state at its first step; a resume must fill it before that. Zero moments and
    step 0 for each flat fp32 partition that has none, as AdamW's own first step would make them (a 0-d step
    tensor on the partition's device), then linked to the weights' fragments (ZeRO-2 links them lazily)."""
    inner = zero_opt.optimizer
    for p in _flat_partitions(zero_opt):
        st = inner.state[p]
        if "exp_avg" not in st:
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    _link_fragments(zero_opt)


def _link_fragments(zero_opt) -> None:
    """ZeRO-2: point each weight's tensor-fragment mapping at its partition's AdamW state, again. DeepSpeed
    0.19.8 links them once, right after the first param group's first step, so with two groups (a policy and
    its value head at another rate) the second group's mappings point at a state that was still empty and
    `safe_get_full_optimizer_state` fails. ZeRO-3 reads the state directly."""
    if hasattr(zero_opt, "_hp_optimizer_states_linked"):
        zero_opt._hp_optimizer_states_linked = False
        zero_opt._lazy_init_hp_params_optimizer_state()


@contextlib.contextmanager
def gathered_for_generation(model: torch.nn.Module):
    """ZeRO-3: inside the block `model` (and whatever else its engine trains) is whole in every process and its
    forward passes gather nothing (DeepSpeed's own `unwrap_model_for_generation`: every weight gathered once, the
    ZeRO-3 module hooks removed, put back after). `generate` runs a different number of passes in each process,
    which per-layer gathers could not follow. Anything else: nothing happens."""
    engine = engine_of(model)
    if engine is None or not has_partitioned_weights(model):
        yield
        return
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    with unwrap_model_for_generation(engine):
        yield


@contextlib.contextmanager
def writable_weights(model: torch.nn.Module):
    """ZeRO-3: inside the block `model`'s weights are whole, and what the main process writes into them is
    partitioned to every process on exit. Anything else: nothing happens."""
    if not has_partitioned_weights(model):
        yield
        return
    with _deepspeed().zero.GatheredParameters(list(model.parameters()), modifier_rank=0):
        yield


def weights_loaded(model: torch.nn.Module) -> None:
    """After weights were loaded into a model DeepSpeed trains: its fp32 master copy (made at initialize) taken
    from them again, or the next step would write the old weights back."""
    engine = engine_of(model)
    if engine is not None:
        engine.optimizer.refresh_fp32_params()


def has_partitioned_weights(model: torch.nn.Module | None) -> bool:
    return model is not None and any(is_partitioned(p) for p in model.parameters())


__all__ = ["DeepSpeedPlan", "check_launch", "is_partitioned", "weights_loaded", "plan_from_env", "initialize", "engine_of", "backward", "step", "full_model_state",
           "optimizer_state", "load_optimizer_state", "local_tensors", "has_partitioned_weights"]
