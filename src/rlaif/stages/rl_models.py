"""The models of an RL stage (ppo, grpo): policy, frozen reference, critic; their optimizers, the replicas of a
data-parallel run, the judge as a reward, and saving the trained policy."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed
from ..config import ConfigError
from ..data.prompts import PromptRow
from ..judges import make_judge
from ..models.loading import (
    disable_dropout,
    is_decoder_only,
    load_causal_lm,
    load_sequence_classifier,
    load_tokenizer,
    resolve_model,
)
from ..models.lora import (
    LoraConfig,
    apply_lora,
    enable_gradient_checkpointing,
    reference_model,
    save_for_inference,
    trainable_parameters,
)
from ..rewards.judge_reward import JudgeReward
from ..rollout.generate import sample_responses
from ..rollout.scoring import value_head
from ..runtime import RunConfig, seed_everything
from .ppo_config import PPOConfig


@dataclass
class Models:
    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None: a LoRA policy whose adapters-disabled self is the reference
    value: torch.nn.Module | None  # a separate critic (None: critic=shared, or critic-free trainers such as GRPO)
    tokenizer: object
    value_head: torch.nn.Linear | None = None  # critic=shared: the scalar head on the policy's hidden states
    _with_head: torch.nn.ModuleList | None = dataclasses.field(default=None, repr=False)

    def trained_with_policy(self) -> torch.nn.Module:
        """What the policy optimizer steps: the policy, plus the shared value head when there is one (one
        module, made once: a DeepSpeed engine hangs on it)."""
        if self.value_head is None:
            return self.policy
        if self._with_head is None:
            self._with_head = torch.nn.ModuleList([self.policy, self.value_head])
        return self._with_head

    def reference_model(self):
        """`with models.reference_model() as ref:` — the frozen KL anchor to call (rlaif.models.lora)."""
        return reference_model(self.policy, self.reference)


def load_policy_and_reference(policy_arg: str, reference_arg: str | None, device, lora: LoraConfig | None = None,
                              gradient_checkpointing: bool = False, fsdp: bool = False) -> Models:
    """The trainable policy and its frozen KL anchor (a second copy of the policy unless named); no critic.
    With LoRA and no reference named, no copy is loaded: the anchor is the policy with its adapters disabled.
    `fsdp`: the policy is sharded over the processes (`distributed.shard_model`); the reference stays whole."""
    tok = load_tokenizer(policy_arg, padding_side="left")
    policy = load_causal_lm(policy_arg, device=device)
    policy.config.pad_token_id = tok.pad_token_id
    use_lora = lora is not None and lora.enabled
    reference = None
    if reference_arg or not use_lora:
        reference = load_causal_lm(reference_arg or policy_arg, device=device).eval().requires_grad_(False)
    disable_dropout(policy)  # before the adapters: lora.dropout stays as configured
    if gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    if use_lora:
        policy = apply_lora(policy, lora)
    if fsdp:
        distributed.shard_model(policy)
    return Models(policy, reference, None, tok)


def check_fsdp(run: RunConfig, lora: LoraConfig, stage: str) -> bool:
    """run.fsdp for ppo / grpo: the policy is sharded (not with LoRA adapters: those are small, and their
    frozen base would be gathered for every pass)."""
    if run.fsdp and lora.enabled:
        raise ConfigError(f"config key 'run.fsdp': not with {stage}.lora (LoRA trains a small part of the "
                          "model; use run.shard_optimizer or plain data parallel)")
    if distributed.deepspeed_stage() == 3 and lora.enabled:
        raise ConfigError(f"config key '{stage}.lora.r': not with DeepSpeed ZeRO-3 (LoRA trains a small part of "
                          "the model; launch with configs/accelerate/deepspeed-zero2.yaml)")
    return run.fsdp


def check_critic_source(cfg: PPOConfig) -> str:
    """The critic's starting checkpoint; per-token values need a causal (decoder) backbone."""
    from transformers import AutoConfig

    src = cfg.value_model or (cfg.reward.model[0] if cfg.value_init == "reward" else cfg.policy)
    if src != cfg.policy and not is_decoder_only(AutoConfig.from_pretrained(resolve_model(src))):
        key = "ppo.value_model" if cfg.value_model else "ppo.value_init"
        raise ConfigError(
            f"config key '{key}': '{src}' is an encoder; a critic needs per-token values from a causal backbone "
            "(use ppo.value_init=policy, or a decoder reward model)")
    return src


def check_reward_source(cfg: PPOConfig) -> None:
    """Checked when the run starts, not at config load: `rlaif pipeline` fills ppo.reward.model in later."""
    if not cfg.reward.model and not cfg.reward.function and cfg.reward.judge_mode == "off":
        raise ConfigError("config key 'ppo.reward': set ppo.reward.model, ppo.reward.function or "
                          "ppo.reward.judge_mode")
    if cfg.value_init == "reward" and not cfg.reward.model and cfg.value_model is None:
        raise ConfigError("config key 'ppo.value_init': 'reward' needs ppo.reward.model")


def build_models(cfg: PPOConfig, device: torch.device, fsdp: bool = False) -> Models:
    """Policy, reference and critic. `fsdp`: the policy is sharded; a separate critic stays whole in every
    process (its gradients are all-reduced, as in plain data parallel)."""
    if cfg.critic == "shared":
        models = load_policy_and_reference(cfg.policy, cfg.reference, device, cfg.lora, cfg.gradient_checkpointing,
                                           fsdp)
        head = torch.nn.Linear(models.policy.get_output_embeddings().in_features, 1).to(device)
        torch.nn.init.zeros_(head.weight)  # V = 0 at the start: the first advantages are reward-to-go
        torch.nn.init.zeros_(head.bias)
        models.value_head = head
        return models
    critic_src = check_critic_source(cfg)
    models = load_policy_and_reference(cfg.policy, cfg.reference, device, cfg.lora, cfg.gradient_checkpointing,
                                       fsdp)
    tok = models.tokenizer
    value = load_sequence_classifier(critic_src, device=device, pad_token_id=tok.pad_token_id)
    if _is_causal_lm_checkpoint(value.config):
        # a fresh head on the policy backbone: start at V = 0 so the first advantages are reward-to-go,
        # not the noise of a random projection
        torch.nn.init.zeros_(value_head(value).weight)
        if value_head(value).bias is not None:
            torch.nn.init.zeros_(value_head(value).bias)
    disable_dropout(value)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(value)
    models.value = value
    return models


def _is_causal_lm_checkpoint(config) -> bool:
    return any(a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))


def build_optimizers(models: Models, cfg: PPOConfig, shard_state: bool = False
                     ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """AdamW for the policy (with a shared value head as a second group at the critic's rate) and for a
    separate critic (None without one: grpo, or a shared critic); `shard_state`: ZeRO-1 over processes
    (`distributed.make_adamw`); under a DeepSpeed launch each in its engine (`distributed.use_deepspeed`)."""
    groups = [{"params": list(trainable_parameters(models.policy)), "lr": cfg.learning_rate}]
    if models.value_head is not None:  # critic=shared: the head trains in the policy's step at its own rate
        groups.append({"params": list(models.value_head.parameters()), "lr": cfg.value_learning_rate})
    opt_policy = distributed.make_adamw(groups, shard_state=shard_state, weight_decay=cfg.weight_decay)
    opt_value = (distributed.make_adamw(models.value.parameters(), shard_state=shard_state,
                                        lr=cfg.value_learning_rate, weight_decay=cfg.weight_decay)
                 if models.value is not None else None)
    # when the launch asked for DeepSpeed (ZeRO-2): each optimizer with its model in an engine
    opt_policy = distributed.use_deepspeed(models.trained_with_policy(), opt_policy, cfg.max_grad_norm,
                                           parts=(models.policy,))
    if opt_value is not None:
        opt_value = distributed.use_deepspeed(models.value, opt_value, cfg.max_grad_norm)
    return opt_policy, opt_value


def judge_reward_sources(cfg: PPOConfig, models: Models, device, amp) -> list[JudgeReward]:
    """The judge reward when ppo.reward.judge_mode is set; pairwise compares with the reference model's answers."""
    rc = cfg.reward
    if rc.judge_mode == "off":
        return []
    judge = make_judge(rc.judge, device=device, autocast=amp,
                       key=f"{type(cfg).__name__.removesuffix('Config').lower()}.reward.judge")
    g = cfg.generation

    def reference_answers(rows: list[PromptRow]) -> list[str]:
        with models.reference_model() as ref:
            rollout, _ = sample_responses(
                ref, models.tokenizer, rows, max_new_tokens=g.max_new_tokens,
                temperature=rc.judge_baseline_temperature, top_p=g.top_p, max_prompt_tokens=g.max_prompt_tokens,
                batch_size=g.batch_size, device=device, autocast=amp())
        return rollout.responses

    return [JudgeReward(judge, rc.judge_mode, use_references=rc.judge_use_references,
                        baseline_fn=reference_answers)]


def check_data_parallel(groups: int, accumulation: int, stage: str, groups_key: str) -> None:
    """Batch sizes are global: each of N processes takes groups / N prompts (with all their answers) and
    gradient_accumulation_steps / N micro-batches per optimizer step."""
    n = distributed.world().size
    if n == 1:
        return
    if groups % n:
        raise ConfigError(f"config key '{stage}.{groups_key}': {groups} prompts per iteration do not split into {n} "
                          "processes (batch sizes are global)")
    if accumulation % n:
        raise ConfigError(f"config key '{stage}.gradient_accumulation_steps': {accumulation} micro-batches per "
                          f"step do not split into {n} processes (batch sizes are global)")


def start_replicas(models: Models, seed: int) -> None:
    """Identical trained weights on every process (rank 0's), then a different sampling stream per process."""
    if not distributed.world().enabled:
        return
    for m in (models.policy, models.value, models.value_head):
        if m is not None:
            distributed.broadcast_parameters(m)
    seed_everything(seed + 1000003 * distributed.world().rank)


def save_policy(models: Models, folder: Path) -> None:
    """Plain HF folder (a LoRA policy merged; its adapter alone in `<folder>_adapter`) + tokenizer; written by
    the main process while the others wait."""
    state = distributed.full_model_state(models.policy)  # a collective when sharded; None otherwise
    if distributed.is_main():
        if state is None:
            save_for_inference(models.policy, folder)
        else:
            distributed.save_pretrained(models.policy, folder, state)
        models.tokenizer.save_pretrained(folder)
    distributed.barrier()
