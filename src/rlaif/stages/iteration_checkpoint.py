"""Resumable checkpoints of an RL stage's iterations (ppo, grpo): every trained model and optimizer whole, the
KL controller, every process's RNG state, the prompt position; written by the main process."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import distributed
from ..checkpoint import load_json, save_json, torch_load, torch_save
from ..config import ConfigError
from ..models.lora import is_lora, load_adapter_weights
from ..runtime import rng_state, set_rng_state
from .rl_models import Models

log = logging.getLogger("rlaif.checkpoint")


def _trained(models: Models, opts) -> list[tuple[str, torch.nn.Module, torch.optim.Optimizer]]:
    pairs = [("policy", models.policy, opts[0]), ("value", models.value, opts[1] if len(opts) > 1 else None)]
    return [(name, m, o) for name, m, o in pairs if m is not None]


def _write_checkpoint(folder: Path, models: Models, opts, opt_states: dict, model_states: dict, kl_ctl, state: dict,
                      rng: dict) -> None:
    """Written by the main process; `rng` holds every process's RNG state (distributed.gather_rng_states),
    `opt_states` every optimizer's whole state (distributed.optimizer_state), `model_states` a sharded model's
    gathered weights (distributed.full_model_state; None for a whole model)."""
    for name, model, _ in _trained(models, opts):
        distributed.save_pretrained(model, folder / name, model_states[name])
    torch_save(opt_states, folder / "optimizers.pt")
    if models.value_head is not None:
        torch_save(model_states.get("value_head") or models.value_head.state_dict(), folder / "value_head.pt")
    torch_save(rng, folder / "rng.pt")
    save_json(folder / "trainer_state.json", {**state, "kl_controller": kl_ctl.state_dict()})


def save_iteration_checkpoint(out: Path, iteration: int, models: Models, opts, kl_ctl, prompt_position: int,
                              shuffle_gen: torch.Generator, keep: int, save) -> None:
    """A resumable checkpoint after `iteration` (ppo, grpo): every process's RNG state gathered, written by the
    main process while the others wait. `save`: the calling stage's `save_checkpoint` (tests wrap it)."""
    state = {"iteration": iteration, "prompt_position": prompt_position}
    rng = distributed.gather_rng_states(rng_state())
    opt_states = {name: distributed.optimizer_state(o, _stepped(models, name))
                  for name, _, o in _trained(models, opts)}
    model_states = {name: distributed.full_model_state(m) for name, m, _ in _trained(models, opts)}
    if models.value_head is not None:  # gathered under DeepSpeed ZeRO-3 (None: the head is whole)
        model_states["value_head"] = distributed.full_model_state(models.value_head)

    def write(folder: Path) -> None:
        _write_checkpoint(folder, models, opts, opt_states, model_states, kl_ctl, state, rng)
        torch_save(shuffle_gen.get_state(), folder / "shuffle_rng.pt")

    if distributed.is_main():
        save(out, iteration, write, keep)
    distributed.barrier()


def _stepped(models: Models, name: str) -> torch.nn.Module:
    """The module whose parameters optimizer `name` steps (the policy with a shared value head, or the critic)."""
    return models.trained_with_policy() if name == "policy" else models.value


def _load_weights(model: torch.nn.Module, sd: dict, where: str) -> None:
    """Load a whole state dict into `model`, sharded (each process keeps its part) or not."""
    missing, unexpected = distributed.load_model_state(model, sd)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"checkpoint {where}: missing {missing}, unexpected {unexpected}")
    if hasattr(model, "tie_weights") and not distributed.holds_partitions(model):
        model.tie_weights()


def _check_checkpoint_fits(folder: Path, models: Models, opts, stage: str) -> None:
    """A checkpoint written with other LoRA or critic settings cannot be resumed: say which key differs (exit 2)
    before loading anything."""
    start_over = "resume with the settings it was written with, or start over with run.resume=never"
    for name, model, _ in _trained(models, opts):
        has_adapter = (folder / name / "adapter_model.safetensors").is_file()
        if has_adapter != is_lora(model):
            raise ConfigError(f"config key '{stage}.lora.r': checkpoint {folder} was written "
                              f"{'with' if has_adapter else 'without'} LoRA adapters on the {name}; {start_over}")
    if (models.value_head is not None) != (folder / "value_head.pt").is_file() or (
            (models.value is not None) != (folder / "value").is_dir()):
        written = "shared" if (folder / "value_head.pt").is_file() else (
            "separate" if (folder / "value").is_dir() else "none (grpo)")
        raise ConfigError(f"config key '{stage}.critic': checkpoint {folder} was written with critic {written}; "
                          f"{start_over}")


def load_iteration_checkpoint(folder: Path, models: Models, opts, kl_ctl, device, stage: str = "ppo") -> dict:
    """Load a checkpoint of `save_iteration_checkpoint` into the models and optimizers (each process its part)
    and this process's RNG state; returns the trainer state (iteration, prompt position)."""
    from safetensors.torch import load_file

    _check_checkpoint_fits(folder, models, opts, stage)
    for name, model, _ in _trained(models, opts):
        if is_lora(model):  # the adapters are all that trains; the base weights are the loaded model's
            load_adapter_weights(model, folder / name, device)
            continue
        _load_weights(model, load_file(str(folder / name / "model.safetensors"), device=str(device)),
                      f"{folder}/{name}")
    if models.value_head is not None:
        with distributed.writable_weights(models.value_head):
            models.value_head.load_state_dict(torch_load(folder / "value_head.pt"))
    optim = torch_load(folder / "optimizers.pt")
    for name, _, opt in _trained(models, opts):
        distributed.weights_loaded(_stepped(models, name))  # DeepSpeed's fp32 master copy from the loaded weights
        distributed.load_optimizer_state(opt, optim[name], _stepped(models, name))
    state = load_json(folder / "trainer_state.json")
    kl_ctl.load_state_dict(state["kl_controller"])
    rng = distributed.my_rng_state(torch_load(folder / "rng.pt"))
    if rng is not None:
        set_rng_state(rng)
    else:
        log.warning("%s was written by a different number of processes: sampling continues from fresh seeds", folder)
    return state
