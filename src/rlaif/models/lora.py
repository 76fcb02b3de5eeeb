"""LoRA policies (PEFT) whose frozen KL anchor is the same model with its adapters disabled, and gradient
checkpointing — the memory options of the RL stages (PPO, GRPO).

With `lora.r > 0` the policy is `peft.get_peft_model(base, ...)`: only the low-rank adapters train, the base
weights never change, so the base model *is* the initial policy. The reference log-probs (and the judge's
baseline answers) come from the same module under `disable_adapter()` instead of a second copy: no reference
weights, no policy gradients or AdamW moments for the base weights. `reference_model` is the one place that
knows which anchor a run has; the trainers only ever write `with models.reference_model() as ref:`.

`peft` is an optional extra (`pip install rlaif[lora]`), imported only when a LoRA policy is built or loaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigError, field

# attention and MLP projections of Llama-like decoders (Llama, SmolLM2, Mistral, Qwen2, Gemma)
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_NAME = "default"  # PEFT's name for the one adapter a run trains


@dataclass
class LoraConfig:
    r: int = field(0, help="LoRA rank; 0 = off (full fine-tuning with a second, frozen copy as the reference). "
                   "> 0: only adapters train and the reference is the policy with its adapters disabled")
    alpha: float = field(16.0, help="LoRA scale numerator: the weight update is (alpha / r) * B @ A")
    dropout: float = field(0.0, help="dropout on the adapter path (> 0 makes the first PPO ratio differ from 1)")
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS),
                                      help="module names that get adapters (default: Llama-like attention + MLP "
                                      "projections)")

    @property
    def enabled(self) -> bool:
        return self.r > 0


def check_lora(cfg: LoraConfig, section: str) -> None:
    """ConfigError naming `<section>.lora.<key>` for values PEFT would reject later (after minutes of loading)."""
    if cfg.r < 0:
        raise ConfigError(f"config key '{section}.lora.r': must be >= 0 (0 = LoRA off)")
    if not cfg.enabled:
        return
    if not cfg.alpha > 0:
        raise ConfigError(f"config key '{section}.lora.alpha': must be > 0")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"config key '{section}.lora.dropout': must be in [0, 1)")
    if not cfg.target_modules or not all(isinstance(m, str) and m for m in cfg.target_modules):
        raise ConfigError(f"config key '{section}.lora.target_modules': needs at least one module name")
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"config key '{section}.lora.r': LoRA needs the optional package peft "
                          "(pip install 'rlaif[lora]')")


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs the optional package peft (pip install 'rlaif[lora]')") from None
    return peft


def apply_lora(model: torch.nn.Module, cfg: LoraConfig) -> torch.nn.Module:
    """Wrap a causal LM in fresh LoRA adapters (B = 0: the wrapped model computes exactly what `model` did)."""
    peft = _peft()
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [m for m in cfg.target_modules if m not in linear]
    if missing:
        raise ConfigError(f"config key 'lora.target_modules': {missing} are not linear layers of "
                          f"{type(model).__name__} (it has {sorted(linear)})")
    pcfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, pcfg, adapter_name=ADAPTER_NAME)


def is_lora(model: torch.nn.Module | None) -> bool:
    """A PEFT-wrapped model (checked without importing peft)."""
    return model is not None and hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


@contextlib.contextmanager
def reference_model(policy: torch.nn.Module, reference: torch.nn.Module | None) -> Iterator[torch.nn.Module]:
    """The frozen KL anchor, to call inside the `with`: the separate reference model when there is one, else the
    LoRA policy with its adapters disabled (= the untouched base weights = the initial policy)."""
    if reference is not None:
        yield reference
        return
    if not is_lora(policy):
        raise RuntimeError("no reference model and the policy has no adapters to disable")
    with policy.disable_adapter():
        yield policy


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimizer steps: every parameter of a full model, only the adapters of a LoRA model."""
    return [p for p in model.parameters() if p.requires_grad]


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (training mode
    only; generation and no-grad scoring run in eval mode and are unaffected). Non-reentrant checkpointing, so
    gradients reach LoRA adapters behind frozen embeddings."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def adapter_folder(folder: Path) -> Path:
    """`<out>/policy` -> `<out>/policy_adapter`: the adapter alone, beside the merged model."""
    return folder.with_name(folder.name + "_adapter")


def merged_state_dict(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state dict with each adapter folded in (W + scale * B @ A), under the base model's own
    keys. New tensors only for adapted weights; the live model is not modified (training can go on)."""
    from peft.tuners.lora import LoraLayer

    base = policy.get_base_model()
    deltas = {name: mod.get_delta_weight(ADAPTER_NAME).detach()
              for name, mod in base.named_modules() if isinstance(mod, LoraLayer)}
    out = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:  # peft keeps the wrapped nn.Linear as `<module>.base_layer`
            module, _, leaf = key.partition(".base_layer.")
            key = f"{module}.{leaf}"
            if leaf == "weight":
                value = value + deltas[module].to(value.dtype)
        out[key] = value
    return out


def save_for_inference(policy: torch.nn.Module, folder: Path) -> None:
    """A trained policy in plain Hugging Face format at `folder` (loadable by AutoModelForCausalLM, the next
    stage's input); for a LoRA policy that is the merged model, and the adapter alone goes to
    `adapter_folder(folder)`."""
    if not is_lora(policy):
        policy.save_pretrained(folder)
        return
    policy.get_base_model().save_pretrained(folder, state_dict=merged_state_dict(policy))
    policy.save_pretrained(adapter_folder(folder))


def load_adapter_weights(policy: torch.nn.Module, folder: Path, device) -> None:
    """Restore adapter weights written by `policy.save_pretrained(folder)` (a checkpoint), exactly."""
    peft = _peft()
    from safetensors.torch import load_file

    sd = load_file(str(folder / "adapter_model.safetensors"), device=str(device))
    result = peft.set_peft_model_state_dict(policy, sd, adapter_name=ADAPTER_NAME)
    expected = {k for k in peft.get_peft_model_state_dict(policy, adapter_name=ADAPTER_NAME)}
    if result.unexpected_keys or expected - set(sd):
        raise RuntimeError(f"checkpoint {folder}: adapter keys missing {sorted(expected - set(sd))[:5]}, "
                           f"unexpected {list(result.unexpected_keys)[:5]}")


__all__ = ["LoraConfig", "check_lora", "apply_lora", "is_lora", "reference_model", "trainable_parameters",
           "enable_gradient_checkpointing", "save_for_inference", "load_adapter_weights", "adapter_folder",
           "merged_state_dict"]
