"""PPO's configuration (`ppo.*` keys): the critic, the rollout batch, the update's losses and KL penalty, the EOS
policy; the keys ppo shares with grpo (policy, reward, sampling, AdamW, checkpoints) are `RLPolicyConfig`'s."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, field, require_min
from .rl_config import GenerationConfig, RewardConfig, RLPolicyConfig


@dataclass
class PPOConfig(RLPolicyConfig):
    gradient_checkpointing: bool = field(False, help="recompute policy and critic activations in the backward "
                                         "pass (less memory, slower updates)")
    critic: Literal["separate", "shared"] = field(
        "shared", help="shared (default): a scalar value head on the policy's own last hidden states, trained with the "
        "policy in one loss (policy + vf_coef x value): one forward pass scores both, no second backbone, its "
        "gradients or AdamW moments in memory; separate: a critic model of its own (value_model / value_init, "
        "value_learning_rate). The demo's three-seed tables (bench/RESULTS.md) found shared learning at least as well")
    vf_coef: float = field(0.1, help="critic=shared: weight of the value loss in the joint loss")
    value_model: str | None = field(None, help="critic initialisation; default: per value_init")
    value_init: Literal["reward", "policy"] = field(
        "policy", help="critic starts from the (first) reward model or from the policy backbone + new head")
    iterations: int = field(20, help="PPO iterations (each: rollouts, value update, policy update)")
    batch_size: int = field(32, help="rollouts per iteration")
    old_logprobs: Literal["recompute", "sampling"] = field(
        "sampling", help="sampling (default): the old log-probs (and a shared critic's values) taken while sampling "
        "(one policy forward pass fewer per rollout, as TRL's PPOTrainer); recompute: from a forward pass over each "
        "rollout, as the update will compute the new ones. sampling comes at the price of a small sampling/training mismatch (KV-cached "
        "decoding vs one full pass; larger in bf16) that shows as ratio != 1 in the first minibatch")
    ppo_epochs: int = field(1, help="passes over each rollout batch")
    value_learning_rate: float = field(1e-5, help="critic=separate: the critic's AdamW learning rate")
    gamma: float = field(1.0, help="discount")
    lam: float = field(0.95, help="GAE lambda")
    value_clip_eps: float | None = field(0.2, help="value clip around old values (None = unclipped)")
    value_loss: Literal["clipped", "sigma"] = field(
        "clipped", help="clipped: 0.5*max((V-R)^2, (Vclip-R)^2); sigma: the seed's, errors divided by std(R)")
    kl_coef: float = field(0.05, help="beta: KL penalty coefficient (initial value when adaptive)")
    kl_estimator: Literal["k1", "k2", "k3"] = field("k1", help="per-token KL estimator in the reward")
    kl_target: float | None = field(None, help="adaptive KL: target sequence KL (None = fixed beta)")
    kl_horizon: int = field(10000, help="adaptive KL horizon (rollouts)")
    kl_mode: Literal["reward", "loss"] = field(
        "reward", help="reward: -beta*KL per token in the reward; loss: the seed's exact full-vocabulary KL to "
        "the reference added to the policy loss")
    whiten_rewards: bool = field(False, help="whiten per-token rewards over the batch (scale only)")
    whiten_advantages: bool = field(True, help="whiten advantages over the batch")
    missing_eos: Literal["penalty", "drop", "keep"] = field(
        "penalty", help="rollouts that hit max_new_tokens without EOS: fixed penalty score, dropped (the seed), "
        "or kept with their own score")
    missing_eos_penalty: float = field(-1.0, help="score given to rollouts without EOS when missing_eos=penalty")
    samples_per_prompt: int = field(1, help="answers sampled per prompt in a batch (batch_size / this prompts); > 1 "
                                    "lets score_baseline=prompt_mean remove what the score owes to the prompt")
    score_baseline: Literal["none", "prompt_mean"] = field(
        "none", help="prompt_mean: subtract from each answer's score the mean score of its prompt's answers "
        "(after the EOS policy), so the reward says which answer to a question is better, not which question "
        "scores high; needs samples_per_prompt > 1")
    save_every: int = field(0, help="save the policy every N iterations (0 = only at the end)")

    def validate(self) -> None:
        self.check_shared("ppo")
        require_min(self, "ppo", 1, "batch_size", "ppo_epochs", "samples_per_prompt")
        mb = self.micro_batch_size * self.gradient_accumulation_steps
        if self.batch_size % mb:
            raise ConfigError(
                f"config key 'ppo.batch_size': {self.batch_size} is not a multiple of micro_batch_size x "
                f"gradient_accumulation_steps = {mb}")
        if self.batch_size % self.samples_per_prompt:
            raise ConfigError(f"config key 'ppo.samples_per_prompt': batch_size {self.batch_size} is not a multiple "
                              f"of {self.samples_per_prompt}")
        if self.score_baseline == "prompt_mean" and self.samples_per_prompt < 2:
            raise ConfigError("config key 'ppo.score_baseline': prompt_mean needs ppo.samples_per_prompt >= 2")
        if self.critic == "shared" and (self.value_model is not None or self.value_init != "policy"):
            raise ConfigError("config key 'ppo.critic': shared (the default) puts the value head on the policy itself; "
                              "ppo.value_model and ppo.value_init=reward need ppo.critic=separate")


__all__ = ["GenerationConfig", "PPOConfig", "RewardConfig"]
