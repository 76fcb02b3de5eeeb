"""PPO with a frozen reference, a separate critic and a KL penalty (Ziegler et al. 2019; Ouyang et al. 2022).

Each iteration: A) rollouts without gradients — sample, score, log-probs of policy and reference, values;
B) value update; C) policy update (the seed's order), each over `ppo_epochs` x minibatches with gradient
accumulation, gradient clipping and AdamW. Losses are divided by the minibatch's token count, so micro-batch
1 x accumulation 4 gives the same update as 4 x 1.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from .. import distributed, ops
from ..checkpoint import (
    find_resume_checkpoint,
    load_json,
    save_checkpoint,
    save_json,
    torch_load,
    torch_save,
)
from ..config import ConfigError, field, require_min
from ..data.prompts import PromptRow, load_prompts
from ..deepspeed_zero import plan_from_env, weights_loaded, writable_weights
from ..judges import JudgeConfig, make_judge
from ..metrics import MetricsLogger
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
    check_lora,
    enable_gradient_checkpointing,
    is_lora,
    load_adapter_weights,
    reference_model,
    save_for_inference,
    trainable_parameters,
)
from ..rewards.judge_reward import JudgeReward
from ..rewards.sources import EnsembleReward, check_finite, make_reward_source
from ..rollout.generate import Rollout, sample_responses
from ..rollout.scoring import response_logprobs, response_logprobs_and_values, response_values, value_head
from ..runtime import RunConfig, autocast_for, rng_state, seed_everything, set_rng_state, setup_run
from .ppo_updates import policy_update, value_update
from .validation import ValidationConfig, Validator, due, training_prompts

log = logging.getLogger("rlaif.ppo")


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
class PPOConfig:
    policy: str = field("smollm2-135m-instruct", help="policy to train: built-in name, folder, .gguf or hub id")
    reference: str | None = field(None, help="frozen KL anchor; default: a copy of the initial policy (with LoRA: "
                                  "the policy with its adapters disabled, no copy; a named one is loaded)")
    lora: LoraConfig = field(default_factory=LoraConfig, help="LoRA adapters on the policy (r=0: off)")
    gradient_checkpointing: bool = field(False, help="recompute policy and critic activations in the backward "
                                         "pass (less memory, slower updates)")
    critic: Literal["separate", "shared"] = field(
        "separate", help="separate: a critic model of its own (value_model / value_init); shared: a scalar value head "
        "on the policy's own last hidden states, trained with the policy in one loss (policy + vf_coef x value): "
        "one forward pass scores both, no second backbone, its gradients or AdamW moments in memory")
    vf_coef: float = field(0.1, help="critic=shared: weight of the value loss in the joint loss")
    value_model: str | None = field(None, help="critic initialisation; default: per value_init")
    value_init: Literal["reward", "policy"] = field(
        "policy", help="critic starts from the (first) reward model or from the policy backbone + new head")
    prompts: str = field("builtin:demo-train", help="prompt JSONL or builtin:demo-train")
    reward: RewardConfig = field(default_factory=RewardConfig, help="reward source")
    generation: GenerationConfig = field(default_factory=GenerationConfig, help="sampling")
    iterations: int = field(20, help="PPO iterations (each: rollouts, value update, policy update)")
    batch_size: int = field(32, help="rollouts per iteration")
    micro_batch_size: int = field(4, help="rollouts per forward/backward")
    gradient_accumulation_steps: int = field(8, help="micro-batches per optimizer step")
    forward_batch_size: int = field(16, help="rollouts per no-grad scoring forward pass")
    old_logprobs: Literal["recompute", "sampling"] = field(
        "recompute", help="recompute: the old log-probs (and a shared critic's values) from a forward pass over each "
        "rollout, as the update will compute the new ones; sampling: taken while sampling (one policy forward pass "
        "fewer per rollout, as TRL's PPOTrainer), at the price of a small sampling/training mismatch (KV-cached "
        "decoding vs one full pass; larger in bf16) that shows as ratio != 1 in the first minibatch")
    ppo_epochs: int = field(1, help="passes over each rollout batch")
    learning_rate: float = field(1e-6, help="policy AdamW learning rate")
    warmup_steps: int = field(0, help="linear learning-rate warm-up over the policy's first N optimizer steps "
                              "(AdamW's first steps move every weight by ~lr whatever the gradient's noise)")
    value_learning_rate: float = field(1e-5, help="critic AdamW learning rate")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    max_grad_norm: float = field(1.0, help="gradient clipping (global norm)")
    gamma: float = field(1.0, help="discount")
    lam: float = field(0.95, help="GAE lambda")
    clip_eps: float = field(0.2, help="policy ratio clip")
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
    checkpoint_every: int = field(5, help="resumable checkpoint every N iterations (0 = never)")
    validation: ValidationConfig = field(default_factory=ValidationConfig, help="a held-out signal every N "
                                         "iterations: reward and judge win-rate against the initial policy on "
                                         "validation prompts")

    def validate(self) -> None:
        self.validation.check("ppo")
        mb = self.micro_batch_size * self.gradient_accumulation_steps
        require_min(self, "ppo", 0, "warmup_steps")
        require_min(self, "ppo", 1, "iterations", "batch_size", "micro_batch_size", "gradient_accumulation_steps",
                    "forward_batch_size", "ppo_epochs", "samples_per_prompt")
        if self.batch_size % mb:
            raise ConfigError(
                f"config key 'ppo.batch_size': {self.batch_size} is not a multiple of micro_batch_size x "
                f"gradient_accumulation_steps = {mb}")
        if self.batch_size % self.samples_per_prompt:
            raise ConfigError(f"config key 'ppo.samples_per_prompt': batch_size {self.batch_size} is not a multiple "
                              f"of {self.samples_per_prompt}")
        if self.score_baseline == "prompt_mean" and self.samples_per_prompt < 2:
            raise ConfigError("config key 'ppo.score_baseline': prompt_mean needs ppo.samples_per_prompt >= 2")
        if self.generation.max_new_tokens < 1:
            raise ConfigError("config key 'ppo.generation.max_new_tokens': must be >= 1")
        if self.generation.temperature <= 0:
            raise ConfigError("config key 'ppo.generation.temperature': PPO needs sampling (> 0)")
        if self.generation.top_p < 1.0:
            raise ConfigError("config key 'ppo.generation.top_p': nucleus sampling draws from the top-p "
                              "nucleus while the update scores the full softmax(logits / T), so the policy would "
                              "train off-policy; use top_p=1 (lower the temperature to sample more narrowly)")
        if self.reward.judge_mode != "off":
            self.reward.judge.validate()
        if self.critic == "shared" and (self.value_model is not None or self.value_init != "policy"):
            raise ConfigError("config key 'ppo.critic': shared puts the value head on the policy itself; unset "
                              "ppo.value_model and keep ppo.value_init=policy")
        check_lora(self.lora, "ppo")


# ---------------------------------------------------------------------------------------------------------
# helpers (each a step of the loop)


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
    plan = plan_from_env()
    if plan is not None and plan.stage == 3 and lora.enabled:
        raise ConfigError(f"config key '{stage}.lora.r': not with DeepSpeed ZeRO-3 (LoRA trains a small part of "
                          "the model; launch with configs/accelerate/deepspeed-zero2.yaml)")
    return run.fsdp


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


def build_optimizers(models: Models, cfg: PPOConfig, shard_state: bool = False
                     ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """AdamW for the policy (with a shared value head as a second group at the critic's rate) and for a
    separate critic (None without one); `shard_state`: ZeRO-1 over processes (`distributed.make_adamw`)."""
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
    judge = make_judge(rc.judge, device=device, autocast=amp)
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


def _is_causal_lm_checkpoint(config) -> bool:
    return any(a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))


class PromptStream:
    """Endless seeded shuffle over the prompt set; `position` (prompts consumed) is all a resume needs."""

    def __init__(self, rows: list[PromptRow], seed: int, position: int = 0):
        self.rows, self.seed, self.position = rows, seed, position
        self._epoch_order: tuple[int, list[int]] = (-1, [])

    def _order(self, epoch: int) -> list[int]:
        if self._epoch_order[0] != epoch:  # one permutation per pass over the data
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._epoch_order = (epoch, torch.randperm(len(self.rows), generator=g).tolist())
        return self._epoch_order[1]

    def take(self, n: int) -> list[PromptRow]:
        out = []
        for _ in range(n):
            epoch, i = divmod(self.position, len(self.rows))
            out.append(self.rows[self._order(epoch)[i]])
            self.position += 1
        return out


@dataclass
class Scored:
    """Rollout tensors after step A. All (b, r) except scores/valid (b,)."""

    rollout: Rollout
    scores: torch.Tensor  # (b,) reward-source score after EOS handling
    raw_scores: torch.Tensor  # (b,) before EOS handling
    valid: torch.Tensor  # (b,) bool: rows that enter the losses
    mask: torch.Tensor  # (b, r) float: response mask of valid rows
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor  # (b, r) per-token KL estimate (estimator of the config)
    advantages: torch.Tensor
    returns: torch.Tensor
    ensemble_std: torch.Tensor | None
    centred: torch.Tensor | None = None  # (b,) scores minus their prompt's mean (score_baseline: prompt_mean)


@torch.no_grad()
def score_batch(models: Models, rollout: Rollout, cfg: PPOConfig, device, amp) -> tuple[torch.Tensor, ...]:
    """Step A2: old log-probs (policy), reference log-probs, values (zeros without a critic), in
    forward_batch_size chunks."""
    models.policy.eval()
    lps, refs, vals = [], [], []
    for s in range(0, len(rollout), cfg.forward_batch_size):
        rows = list(range(s, min(s + cfg.forward_batch_size, len(rollout))))
        args = rollout.model_inputs(rows, device)
        with amp():
            if rollout.logprobs is not None:  # old_logprobs=sampling: taken while sampling, no policy pass
                lps.append(rollout.logprobs[rows].float())
                v = rollout.values[rows].float() if models.value_head is not None else None
            elif models.value_head is not None:  # critic=shared: one pass gives log-probs and values
                lp, _, _, v = response_logprobs_and_values(models.policy, models.value_head, *args,
                                                           cfg.generation.temperature)
                lps.append(lp.float().cpu())
            else:
                lps.append(response_logprobs(models.policy, *args, cfg.generation.temperature)[0].float().cpu())
            with models.reference_model() as ref:
                refs.append(response_logprobs(ref, *args, cfg.generation.temperature)[0].float().cpu())
            vals.append(v.cpu() if models.value_head is not None
                        else response_values(models.value, *args).float().cpu() if models.value is not None
                        else torch.zeros(args[2].shape, dtype=torch.float32))
    distributed.reshard(models.policy)  # FSDP keeps the root's weights gathered after a forward without backward
    return torch.cat(lps), torch.cat(refs), torch.cat(vals)


def apply_eos_policy(raw: torch.Tensor, ended: torch.Tensor, cfg: PPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(b,) scores, (b,) ended-with-EOS -> (scores, valid rows)."""
    scores = raw.clone()
    if cfg.reward.clip is not None:
        scores = scores.clamp(-cfg.reward.clip, cfg.reward.clip)
    if cfg.missing_eos == "penalty":
        scores = torch.where(ended, scores, torch.full_like(scores, cfg.missing_eos_penalty))
        return scores, torch.ones_like(ended)
    if cfg.missing_eos == "keep":
        return scores, torch.ones_like(ended)
    return scores, ended.clone()


def compute_advantages(sc_parts: dict, cfg: PPOConfig, kl_coef: float) -> dict:
    """Step A4: shaped rewards, GAE, whitening — all pure functions from rlaif.ops."""
    mask = sc_parts["mask"]
    beta = kl_coef if cfg.kl_mode == "reward" else 0.0  # kl_mode=loss: the reward holds the score only
    rewards, kl_tok = ops.shaped_rewards(sc_parts["scores"], sc_parts["logprobs"], sc_parts["ref_logprobs"], mask,
                                         beta, cfg.kl_estimator)
    n_global = distributed.masked_count(mask)  # whitening statistics span every process's rollouts
    if cfg.whiten_rewards and n_global > 1:
        rewards = distributed.whiten(rewards, mask, shift_mean=False)
    advantages, returns = ops.gae(rewards, sc_parts["values"], mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages and n_global > 1:
        advantages = distributed.whiten(advantages, mask)
    return {"rewards": rewards, "kl": kl_tok, "advantages": advantages, "returns": returns}


# ---------------------------------------------------------------------------------------------------------
# checkpoints


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
    if distributed.is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        result = set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, strict=False))
        missing, unexpected = result.missing_keys, result.unexpected_keys
    else:
        with writable_weights(model):  # DeepSpeed ZeRO-3: gathered, then partitioned from the main process's
            missing, unexpected = model.load_state_dict(sd, strict=False)
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


def _load_checkpoint(folder: Path, models: Models, opts, kl_ctl, device, stage: str = "ppo") -> dict:
    from safetensors.torch import load_file

    _check_checkpoint_fits(folder, models, opts, stage)
    for name, model, _ in _trained(models, opts):
        if is_lora(model):  # the adapters are all that trains; the base weights are the loaded model's
            load_adapter_weights(model, folder / name, device)
            continue
        _load_weights(model, load_file(str(folder / name / "model.safetensors"), device=str(device)),
                      f"{folder}/{name}")
    if models.value_head is not None:
        with writable_weights(models.value_head):
            models.value_head.load_state_dict(torch_load(folder / "value_head.pt"))
    optim = torch_load(folder / "optimizers.pt")
    for name, _, opt in _trained(models, opts):
        weights_loaded(_stepped(models, name))  # DeepSpeed's fp32 master copy from the loaded weights
        distributed.load_optimizer_state(opt, optim[name], _stepped(models, name))
    state = load_json(folder / "trainer_state.json")
    kl_ctl.load_state_dict(state["kl_controller"])
    rng = distributed.my_rng_state(torch_load(folder / "rng.pt"))
    if rng is not None:
        set_rng_state(rng)
    else:
        log.warning("%s was written by a different number of processes: sampling continues from fresh seeds", folder)
    return state


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


def global_view(sc: Scored) -> Scored:
    """Every process's rows of a scored batch, for metrics (the same object with one process)."""
    if not distributed.world().enabled:
        return sc
    g = distributed.gather_rows
    r = sc.rollout
    rollout = Rollout(g(r.prompt_ids[:, -1:]), g(r.prompt_mask[:, -1:]), g(r.response_ids), g(r.response_mask),
                      g(r.ended_with_eos), sum(distributed.all_gather_object(r.prompts), []),
                      sum(distributed.all_gather_object(r.responses), []))
    return Scored(rollout, g(sc.scores), g(sc.raw_scores), g(sc.valid), g(sc.mask), g(sc.logprobs),
                  g(sc.ref_logprobs), g(sc.values), g(sc.rewards), g(sc.kl), g(sc.advantages), g(sc.returns),
                  g(sc.ensemble_std) if sc.ensemble_std is not None else None,
                  g(sc.centred) if sc.centred is not None else None)


# ---------------------------------------------------------------------------------------------------------
# the loop


def train(run: RunConfig, cfg: PPOConfig, resolved_config: dict | None = None) -> Path:
    """Run PPO; returns the folder of the final policy (Hugging Face format)."""
    check_reward_source(cfg)
    out, device = setup_run(run, data_parallel=True, fsdp=True)
    check_data_parallel(cfg.batch_size // cfg.samples_per_prompt, cfg.gradient_accumulation_steps, "ppo",
                        "batch_size")
    fsdp = check_fsdp(run, cfg.lora, "ppo")
    seed_everything(run.seed)
    amp = autocast_for(device, run.precision)
    # bad input fails before minutes of model loading; validation prompts are never trained on
    prompts = training_prompts(load_prompts(cfg.prompts), cfg.validation, "ppo")
    models = build_models(cfg, device, fsdp)
    start_replicas(models, run.seed)
    reward_fn = make_reward_source(
        cfg.reward.model, cfg.reward.function, device=device, batch_size=cfg.reward.batch_size,
        max_length=cfg.reward.max_length, input_format=cfg.reward.input_format, combine=cfg.reward.combine,
        std_k=cfg.reward.std_k, autocast=amp(),
        extra=(judge_sources := judge_reward_sources(cfg, models, device, amp)),
    )
    opt_policy, opt_value = build_optimizers(models, cfg, shard_state=run.shard_optimizer)
    kl_ctl = ops.make_kl_controller(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    metrics = MetricsLogger(out, run.report_to, resolved_config)
    start, position = 0, 0
    ckpt = find_resume_checkpoint(out, run.resume)
    validator = start_validation(cfg, models, reward_fn, out, device, amp, resumed=ckpt is not None)
    if ckpt is not None:
        state = _load_checkpoint(ckpt, models, (opt_policy, opt_value), kl_ctl, device)
        start, position = state["iteration"], state["prompt_position"]
        log.info("resumed from %s (iteration %d)", ckpt, start)
    metrics.truncate_after(start)  # a fresh run in a used folder, or a resume: each iteration logged once
    stream = PromptStream(prompts, run.seed, position)
    shuffle_gen = torch.Generator().manual_seed(run.seed + 1)
    if ckpt is not None and (ckpt / "shuffle_rng.pt").exists():
        shuffle_gen.set_state(torch_load(ckpt / "shuffle_rng.pt"))

    bar = tqdm(range(start, cfg.iterations), initial=start, total=cfg.iterations, desc="ppo",
               disable=not run.progress or not distributed.is_main(), dynamic_ncols=True)
    for it in bar:
        t_iter = time.perf_counter()
        try:
            # 1. generate: sample one response per prompt from the current policy (no gradients); with N
            #    processes each takes its slice of the global batch (whole groups of a prompt's answers)
            g_n = cfg.samples_per_prompt  # one prompt's answers are contiguous
            rows = [r for r in stream.take(cfg.batch_size // g_n) for _ in range(g_n)]
            rows = rows[distributed.shard(len(rows), g_n)]
            t0 = time.perf_counter()
            g = cfg.generation
            rollout, n_trunc = sample_responses(
                models.policy, models.tokenizer, rows, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                top_p=g.top_p, min_new_tokens=g.min_new_tokens, max_prompt_tokens=g.max_prompt_tokens,
                batch_size=g.batch_size, device=device, autocast=amp(), keep_logprobs=cfg.old_logprobs == "sampling",
                value_head=models.value_head,
            )
            t_gen = time.perf_counter() - t0

            # 2. score: reward source on (question, answer) texts; EOS policy; then old/ref log-probs and values
            t0 = time.perf_counter()
            raw = check_finite(reward_fn(rollout.prompts, rollout.responses, rows=rows),
                               getattr(reward_fn, "name", "reward"))
            scores, valid = apply_eos_policy(raw, rollout.ended_with_eos, cfg)
            centred = ops.centre_within_groups(scores, g_n, valid) if cfg.score_baseline == "prompt_mean" else None
            mask = (rollout.response_mask & valid[:, None]).float()
            logprobs, ref_logprobs, values = score_batch(models, rollout, cfg, device, amp)
            t_score = time.perf_counter() - t0

            # 3. rewards and 4. advantages (pure math in rlaif.ops)
            parts = {"scores": scores if centred is None else centred, "mask": mask, "logprobs": logprobs,
                     "ref_logprobs": ref_logprobs, "values": values}
            adv = compute_advantages(parts, cfg, kl_ctl.value)
            sc = Scored(rollout, scores, raw, valid, mask, logprobs, ref_logprobs, values, adv["rewards"], adv["kl"],
                        adv["advantages"], adv["returns"],
                        reward_fn.last_std if isinstance(reward_fn, EnsembleReward) else None, centred)

            # 5. update: critic first, then policy (the seed's order); a shared critic trains inside the policy's
            #    update (one loss, one pass)
            t0 = time.perf_counter()
            stats: dict[str, float] = {}
            if distributed.any_true(bool(valid.any())):
                if models.value is not None:
                    stats.update(value_update(models, opt_value, sc, cfg, device, amp, shuffle_gen))
                stats.update(policy_update(models, opt_policy, sc, kl_ctl.value, cfg, device, amp, shuffle_gen,
                                           iteration=it))
            else:
                log.warning("iteration %d: no rollout ended with EOS; update skipped (ppo.missing_eos=drop)", it + 1)
            t_update = time.perf_counter() - t0
        except FloatingPointError as e:  # NaN/inf: stop; the last good checkpoint stays, no weights saved
            raise FloatingPointError(f"iteration {it + 1}: {e}") from None

        # 6. KL controller and metrics (over every process's rollouts)
        sc_all = global_view(sc)
        n_valid = int(sc_all.valid.sum())
        seq_kl = sc_all.kl.sum(1)[sc_all.valid].mean().item() if n_valid else math.nan
        beta_used = kl_ctl.value
        if n_valid:  # an iteration that measured nothing must not move the adaptive coefficient
            kl_ctl.update(seq_kl, n_valid)
        n_tok = int(sc_all.rollout.response_mask.sum())
        n_trunc = int(distributed.all_reduce_floats([n_trunc])[0])
        dt = time.perf_counter() - t_iter
        for js in judge_sources:  # pairwise judge reward: win-rate against the reference policy's answers
            keys = sorted(js.last_stats)
            means = distributed.all_reduce_floats([js.last_stats[k] for k in keys])
            stats.update({k: v / distributed.world().size for k, v in zip(keys, means)})
        if validator is not None and due(cfg.validation, it + 1, cfg.iterations):  # held-out signal
            t0 = time.perf_counter()
            stats.update(validator.validate(models.policy), s_validate=time.perf_counter() - t0)
        row = metrics.log(it + 1, _iteration_metrics(sc_all, stats, seq_kl, beta_used, n_tok, n_trunc, dt,
                                                     t_gen, t_score, t_update, cfg.kl_mode == "reward"))
        kl_shown = seq_kl if math.isfinite(seq_kl) else float("nan")
        bar.set_postfix(score=f"{row['score_mean'] if row['score_mean'] is not None else math.nan:.3f}", kl=f"{kl_shown:.3f}", eos=f"{row['eos_rate']:.2f}")
        if not run.progress:
            log.info("iter %d/%d score %.3f (raw reward %.3f) kl %.4f len %.1f eos %.2f %.1fs", it + 1,
                     cfg.iterations, row["score_mean"] if row["score_mean"] is not None else math.nan,
                     row["reward_mean"], kl_shown, row["response_length"], row["eos_rate"], dt)
        log_validation(row, it + 1)

        # 7. save: policy every save_every, resumable checkpoint every checkpoint_every
        if cfg.save_every and (it + 1) % cfg.save_every == 0:
            save_policy(models, out / f"policy-iter-{it + 1:05d}")
        if cfg.checkpoint_every and ((it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations):
            save_iteration_checkpoint(out, it + 1, models, (opt_policy, opt_value), kl_ctl, stream.position,
                                      shuffle_gen, run.keep_checkpoints, save_checkpoint)
    bar.close()
    metrics.close()
    final = out / "policy"
    save_policy(models, final)
    return final


def _iteration_metrics(sc: Scored, stats: dict, seq_kl: float, beta: float, n_tok: int, n_trunc: int, dt: float,
                       t_gen: float, t_score: float, t_update: float, kl_in_reward: bool = True) -> dict:
    r = sc.rollout
    lengths = r.response_mask.sum(1).float()
    row = {
        "reward_mean": sc.raw_scores.mean().item(),
        "reward_std": sc.raw_scores.std().item() if len(r) > 1 else 0.0,
        "score_mean": sc.scores[sc.valid].mean().item() if sc.valid.any() else math.nan,  # before any baseline
        "kl": seq_kl,
        "kl_coef": beta,
        # the KL part of the reward, -beta x sequence KL (before any reward whitening; none with kl_mode=loss)
        "non_score_reward": -beta * seq_kl if kl_in_reward else 0.0,
        "response_length": lengths.mean().item(),
        "eos_rate": r.ended_with_eos.float().mean().item(),
        "valid_rows": int(sc.valid.sum()),
        "value_mean": ops.masked_mean(sc.values, sc.mask).item(),
        "return_mean": ops.masked_mean(sc.returns, sc.mask).item(),
        "prompts_truncated": n_trunc,
        "tokens": n_tok,
        "tokens_per_s": n_tok / dt,
        "s_generate": t_gen,
        "s_score": t_score,
        "s_update": t_update,
        "s_iteration": dt,
    }
    if sc.centred is not None and int(sc.valid.sum()) > 1:  # the signal the policy sees: spread within prompts
        row["score_centred_std"] = sc.centred[sc.valid].std().item()
    if sc.ensemble_std is not None:
        row["ensemble_std"] = sc.ensemble_std.mean().item()
    row.update(stats)
    return row


def start_validation(cfg, models: Models, reward_fn, out: Path, device, amp, resumed: bool) -> Validator | None:
    """The held-out validation of ppo / grpo (None when `validation.prompts` is unset); called before a
    checkpoint is loaded, so the initial answers come from the initial policy."""
    if not cfg.validation.enabled:
        return None
    validator = Validator(cfg.validation, models.tokenizer, reward_fn, cfg.generation, device, amp)
    validator.start(models.policy, out, resumed)
    return validator


def log_validation(row: dict, iteration: int) -> None:
    if "val_reward_mean" in row:
        win = f", judge win-rate vs initial policy {row['val_win_rate']:.3f}" if "val_win_rate" in row else ""
        log.info("validation after iteration %d: reward %.3f (%+.3f vs initial policy)%s, len %.1f, eos %.2f",
                 iteration, row["val_reward_mean"], row["val_reward_gain"], win, row["val_length"],
                 row["val_eos_rate"])


__all__ = ["PPOConfig", "RewardConfig", "GenerationConfig", "train"]
