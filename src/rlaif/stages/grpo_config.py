"""GRPO's configuration (`grpo.*` keys): groups, advantages, the k3 KL term, the EOS policy; the keys grpo shares
with ppo (policy, reward, sampling, AdamW, checkpoints) are `RLPolicyConfig`'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, field, require_min
from .rl_config import RLPolicyConfig


@dataclass
class GRPOConfig(RLPolicyConfig):
    gradient_checkpointing: bool = field(False, help="recompute policy activations in the backward pass (less "
                                         "memory, slower updates)")
    advantage: Literal["group", "rloo"] = field(
        "group", help="group: (r - group mean) / (group std + eps) (GRPO); rloo: r - mean of the other answers")
    scale_rewards: bool = field(True, help="group advantages: divide by the group's std (false = Dr. GRPO)")
    iterations: int = field(20, help="iterations (each: sample groups, score, update)")
    prompts_per_iteration: int = field(8, help="prompts per iteration")
    group_size: int = field(4, help="G answers sampled per prompt (>= 2)")
    forward_batch_size: int = field(16, help="answers per no-grad scoring forward pass")
    epochs: int = field(1, help="passes over each iteration's answers (mu in the GRPO paper)")
    kl_coef: float = field(0.04, help="beta of the k3 KL(policy || reference) term in the loss (0 = none)")
    missing_eos: Literal["penalty", "keep"] = field(
        "penalty", help="answers that hit max_new_tokens without EOS: fixed penalty score, or their own score")
    missing_eos_penalty: float = field(-1.0, help="score of answers without EOS when missing_eos=penalty")

    # what the shared PPO code reads under its own names
    kl_mode = "k3"

    @property
    def ppo_epochs(self) -> int:
        return self.epochs

    @property
    def batch_size(self) -> int:
        return self.prompts_per_iteration * self.group_size

    def validate(self) -> None:
        self.check_shared("grpo")
        require_min(self, "grpo", 1, "prompts_per_iteration", "epochs")
        require_min(self, "grpo", 2, "group_size")
        mb = self.micro_batch_size * self.gradient_accumulation_steps
        if self.batch_size % mb:
            raise ConfigError(f"config key 'grpo.prompts_per_iteration': prompts_per_iteration x group_size = "
                              f"{self.batch_size} is not a multiple of micro_batch_size x "
                              f"gradient_accumulation_steps = {mb}")
        if self.kl_coef < 0:
            raise ConfigError("config key 'grpo.kl_coef': must be >= 0")


__all__ = ["GRPOConfig"]
