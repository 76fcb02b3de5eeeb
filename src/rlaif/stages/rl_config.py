"""What the RL stages (ppo, grpo) share in their configs, defined once: the policy and its reference, the prompts,
the reward source (`RewardConfig`), sampling (`GenerationConfig`), the policy update's batch and AdamW keys,
checkpoints and the held-out validation. A stage's config inherits them and re-declares only what is its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, field, require_min
from ..judges import JudgeConfig
from ..models.lora import LoraConfig, check_lora
from .validation import ValidationConfig


@dataclass
class RewardConfig:
    model: list[str] = field(default_factory=list, help="reward model(s): built-in name, folder or hub id; "
                             "several make an ensemble")
    function: str | None = field(None, help="a Python reward `module:function` or `file.py:function` "
                                 "called as f(prompts, responses) -> list[float]")
    combine: Literal["mean", "min", "mean_minus_std"] = field("mean", help="how an ensemble is combined")
    std_k: float = field(1.0, help="k in mean - k*std")
    input_format: Literal["auto", "chat", "pair"] = field(
        "auto", help="chat: decoder RM reads the chat transcript; pair: encoder RM takes (question, answer)")
    max_length: int = field(1024, help="tokens the reward model sees (longer inputs are truncated)")
    batch_size: int = field(16, help="reward model forward batch size")
    clip: float | None = field(None, help="clip scores to [-clip, clip] (None = no clipping)")
    judge_mode: Literal["off", "pointwise", "pairwise"] = field(
        "off", help="an AI judge as (part of) the reward: pointwise = 2*score-1; pairwise = 2*P(policy's answer "
        "beats the reference policy's answer, both orders)-1; off = no judge")
    judge: JudgeConfig = field(default_factory=JudgeConfig, help="the judge when judge_mode is not off")
    judge_use_references: bool = field(True, help="show the prompts' reference answers to the judge")
    judge_baseline_temperature: float = field(
        0.0, help="pairwise: sampling temperature of the reference policy's answer (0 = greedy; one per prompt)")


@dataclass
class GenerationConfig:
    max_new_tokens: int = field(48, help="budget of new tokens per response")
    min_new_tokens: int = field(1, help="EOS is suppressed before this many tokens (benchmarks set = max)")
    temperature: float = field(0.7, help="sampling temperature; log-probs are computed at the same temperature")
    top_p: float = field(1.0, help="nucleus sampling; ppo and grpo need 1 (their updates score the full softmax)")
    max_prompt_tokens: int = field(512, help="longer prompts keep their last tokens (counted in metrics)")
    batch_size: int = field(32, help="prompts per generate() call")


@dataclass
class RLPolicyConfig:
    policy: str = field("smollm2-135m-instruct", help="policy to train: built-in name, folder, .gguf or hub id")
    reference: str | None = field(None, help="frozen KL anchor; default: a copy of the initial policy (with LoRA: "
                                  "the policy with its adapters disabled, no copy; a named one is loaded)")
    lora: LoraConfig = field(default_factory=LoraConfig, help="LoRA adapters on the policy (r=0: off)")
    prompts: str = field("builtin:demo-train", help="prompt JSONL or builtin:demo-train")
    reward: RewardConfig = field(default_factory=RewardConfig, help="reward source")
    generation: GenerationConfig = field(default_factory=GenerationConfig, help="sampling")
    iterations: int = field(20, help="iterations (each: sample, score, update)")
    micro_batch_size: int = field(4, help="rollouts per forward/backward")
    gradient_accumulation_steps: int = field(8, help="micro-batches per optimizer step")
    forward_batch_size: int = field(16, help="rollouts per no-grad scoring forward pass")
    learning_rate: float = field(1e-6, help="policy AdamW learning rate")
    warmup_steps: int = field(0, help="linear learning-rate warm-up over the policy's first N optimizer steps "
                              "(AdamW's first steps move every weight by ~lr whatever the gradient's noise)")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    max_grad_norm: float = field(1.0, help="gradient clipping (global norm)")
    clip_eps: float = field(0.2, help="policy ratio clip")
    checkpoint_every: int = field(5, help="resumable checkpoint every N iterations (0 = never)")
    validation: ValidationConfig = field(default_factory=ValidationConfig, help="a held-out signal every N "
                                         "iterations: reward and judge win-rate against the initial policy on "
                                         "validation prompts")

    def check_shared(self, section: str) -> None:
        """The checks of the shared keys: counts, sampling the update can score, the judge, LoRA."""
        self.validation.check(section)
        require_min(self, section, 0, "warmup_steps")
        require_min(self, section, 1, "iterations", "micro_batch_size", "gradient_accumulation_steps",
                    "forward_batch_size")
        if self.generation.max_new_tokens < 1:
            raise ConfigError(f"config key '{section}.generation.max_new_tokens': must be >= 1")
        if self.generation.temperature <= 0:
            raise ConfigError(f"config key '{section}.generation.temperature': {section.upper()} needs sampling (> 0)")
        if self.generation.top_p < 1.0:
            raise ConfigError(f"config key '{section}.generation.top_p': nucleus sampling draws from the top-p "
                              "nucleus while the update scores the full softmax(logits / T), so the policy would "
                              "train off-policy; use top_p=1 (lower the temperature to sample more narrowly)")
        if self.reward.judge_mode != "off":
            self.reward.judge.validate()
        check_lora(self.lora, section)


__all__ = ["GenerationConfig", "RLPolicyConfig", "RewardConfig"]
