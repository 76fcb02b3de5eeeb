"""Device, precision, seeding, RNG state and the run folder — shared by every stage."""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from . import distributed
from .config import field

log = logging.getLogger("rlaif")


@dataclass
class RunConfig:
    output_dir: str = field("", help="folder for checkpoints, metrics.jsonl, config.yaml and the model "
                            "(empty = runs/<stage>)")
    seed: int = field(0, help="seed for python, numpy and torch (sampling, shuffling, init)")
    device: Literal["auto", "cpu", "cuda"] = field("auto", help="auto = cuda when available, else cpu")
    precision: Literal["auto", "fp32", "bf16"] = field(
        "auto", help="auto = bf16 autocast with fp32 master weights on GPU, fp32 on CPU; bf16 = bf16 autocast "
        "on CPU too, where the CPU has native bf16 (AVX512-BF16 or AMX; else fp32 with a warning)"
    )
    shard_optimizer: bool = field(
        False, help="with N processes (accelerate launch): ZeRO stage 1, each process keeps the AdamW moments of "
        "1/N of the parameters (same update; ignored with one process)")
    fsdp: bool = field(
        False, help="with N processes: shard the trained model's weights, gradients and AdamW moments over them "
        "(torch FSDP2 fully_shard, ZeRO stage 3; sft, rm, dpo, and the policy in ppo and grpo; ignored with one "
        "process)")
    threads: int = field(0, help="torch CPU threads; 0 = leave torch's default")
    resume: str = field("auto", help="auto = continue from the latest complete checkpoint; never; or a path")
    keep_checkpoints: int = field(2, help="how many of the latest checkpoints to keep")
    report_to: list[str] = field(default_factory=list, help="extra metric sinks: tensorboard, wandb")
    progress: bool = field(True, help="show progress bars")

    def validate(self) -> None:
        from .config import ConfigError

        for sink in self.report_to:
            if sink not in ("tensorboard", "wandb"):
                raise ConfigError(f"config key 'run.report_to': unknown sink '{sink}' (tensorboard | wandb)")
        if self.keep_checkpoints < 1:
            raise ConfigError("config key 'run.keep_checkpoints': must be >= 1")
        if self.fsdp and self.shard_optimizer:
            raise ConfigError("config key 'run.fsdp': already shards the AdamW moments; drop run.shard_optimizer")


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device=cuda but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles), so bf16 autocast is faster than
    fp32 here; without it oneDNN emulates bf16 and autocast is many times slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: assume emulation
        return False


def autocast_for(device: torch.device, precision: str):
    """A fresh autocast context per use or a null context (fp32).

    bf16 autocast (fp32 master weights) on GPU for precision auto or bf16; on CPU only for precision bf16 and
    only where the CPU has native bf16 (`cpu_has_native_bf16`), else fp32 with a warning.
    """
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        if device.type == "cuda":
            return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        if cpu_has_native_bf16():
            return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
        log.warning("run.precision=bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is many "
                    "times slower than fp32; running in fp32")
    return contextlib.nullcontext


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def setup_run(run: RunConfig, data_parallel: bool = False, fsdp: bool = False) -> tuple[Path, torch.device]:
    """The run folder and device; joins the launcher's process group. Stages that do not shard their work
    (`data_parallel=False`) refuse to run in several processes rather than repeat the same work N times;
    stages that cannot shard their models (`fsdp=False`) refuse run.fsdp; a DeepSpeed launch refuses rlaif's
    own sharding keys beside it."""
    from .config import ConfigError

    if run.fsdp and not fsdp:
        raise ConfigError("config key 'run.fsdp': this stage trains no model; only rlaif sft, rm, dpo, ppo and "
                          "grpo shard one")
    if data_parallel:  # a one-process stage says so below
        distributed.check_launch(run)
    if not run.output_dir:
        raise ConfigError("config key 'run.output_dir': empty (the CLI defaults it to runs/<stage>)")
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if run.threads > 0:
        torch.set_num_threads(run.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    world = distributed.init_from_env(run.device)  # no-op without a launcher
    if world.enabled and not data_parallel:
        raise ConfigError(f"this stage runs in one process, not {world.size}: start it without accelerate launch "
                          "/ torchrun (data parallel: rlaif sft, rm, dpo, ppo, grpo)")
    device = pick_device(run.device)
    if world.enabled and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    return out, device
