"""PPO's two update phases over one scored rollout batch: B) the critic, C) the policy.

Each runs `ppo_epochs` x minibatches; a minibatch is `gradient_accumulation_steps` micro-batches whose losses
are divided by the minibatch's token count (not each micro-batch's), so micro-batch 1 x accumulation 4 gives the
same gradient as 4 x 1. Logged statistics are token-weighted for the same reason.

Data parallel (rlaif.distributed): each process holds its shard of the rollouts and runs
gradient_accumulation_steps / N micro-batches per optimizer step; the token count is the global minibatch's and
the gradients are summed over processes before clipping, so the step equals the single-process one.
"""

from __future__ import annotations

import torch

from .. import distributed, ops
from ..optimizer_step import optimizer_step
from ..rollout.scoring import response_logprobs, response_logprobs_and_values, response_values
from .ppo_batch import Scored
from .ppo_config import PPOConfig
from .rl_models import Models


def _step(optimizer, model, max_norm: float, what: str) -> float:
    """One optimizer step of the policy or the value model (`optimizer_step`: reduce, clip, AdamW, checks)."""
    return optimizer_step(optimizer, model, max_norm, what)


def _named_step(optimizer, model, max_norm: float, what: str) -> float:
    """`_step`, with the model (policy | value) named in a NaN/inf stop."""
    try:
        return _step(optimizer, model, max_norm, what)
    except FloatingPointError as e:
        raise FloatingPointError(f"{what}: {e}") from None


def _minibatch_rows(cfg: PPOConfig) -> int:
    """Rollouts per optimizer step in this process."""
    return cfg.micro_batch_size * (cfg.gradient_accumulation_steps // distributed.world().size)


def _minibatches(n: int, cfg: PPOConfig, gen: torch.Generator):
    """Yield lists of micro-batch index tensors, one list per optimizer step, for every epoch."""
    mb = _minibatch_rows(cfg)
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, mb):
            idx = perm[s:s + mb]
            yield [idx[m:m + cfg.micro_batch_size] for m in range(0, len(idx), cfg.micro_batch_size)]


class TokenWeighted:
    """Token-weighted means of per-micro-batch statistics, so logged figures do not depend on micro-batching."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, name: str, mean: torch.Tensor | float, n_tokens: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(mean) * n_tokens
        self.weights[name] = self.weights.get(name, 0.0) + n_tokens

    def result(self) -> dict[str, float]:
        """Means over every process's tokens (all processes log the same names in the same order)."""
        keys = sorted(self.sums)
        both = distributed.all_reduce_floats([self.sums[k] for k in keys] + [self.weights[k] for k in keys])
        sums, weights = both[:len(keys)], both[len(keys):]
        return {k: s / w for k, s, w in zip(keys, sums, weights) if w > 0}


def _global_tokens(mask: torch.Tensor, micro: list[torch.Tensor]) -> torch.Tensor:
    """Response tokens of a minibatch over every process (the loss normaliser), at least 1."""
    return distributed.all_reduce(sum(mask[i].sum() for i in micro)).clamp(min=1.0)


def _mean_over_steps(stats: dict[str, list[float]]) -> dict[str, float]:
    """Per-optimizer-step losses summed over processes, then averaged over steps; norms are already global."""
    out = {}
    for k, v in stats.items():
        if not v:
            continue
        vals = distributed.all_reduce_floats(v) if k.endswith("_loss") else v
        out[k] = sum(vals) / len(vals)
    return out


def value_update(models: Models, opt, sc: Scored, cfg: PPOConfig, device, amp, gen) -> dict[str, float]:
    """Step B: critic regression to the GAE returns, clipped around the rollout values."""
    models.value.train()
    stats: dict[str, list[float]] = {"value_loss": [], "value_grad_norm": []}
    tw = TokenWeighted()
    return_std = (distributed.masked_mean_var(sc.returns, sc.mask)[1].sqrt().item() if cfg.value_loss == "sigma"
                  else None)
    for micro in _minibatches(len(sc.rollout), cfg, gen):
        n_tokens = _global_tokens(sc.mask, micro)
        total = 0.0
        for idx in micro:
            args = sc.rollout.model_inputs(idx, device)
            with amp():
                v = response_values(models.value, *args)
            loss, st = ops.ppo_value_loss(
                v.float(), sc.values[idx].to(device), sc.returns[idx].to(device), sc.mask[idx].to(device),
                cfg.value_clip_eps, normalizer=n_tokens.to(device), return_std=return_std,
            )
            _check_finite_loss(loss, "value loss")
            distributed.backward(loss, models.value)
            total += loss.item()
            tw.add("vf_clipfrac", st["vf_clipfrac"], float(sc.mask[idx].sum()))
        stats["value_grad_norm"].append(_named_step(opt, models.value, cfg.max_grad_norm, "value"))
        stats["value_loss"].append(total)
    return {**_mean_over_steps(stats), **tw.result()}


def warm_up(opt, cfg: PPOConfig, step: int) -> float:
    """Set the learning rate of the policy optimizer's groups (the policy; a shared value head) for optimizer
    step `step` (0-based, counted over the whole run): linear warm-up over cfg.warmup_steps, then constant.
    AdamW's first steps move every weight by about the learning rate, whatever the gradient's noise (its second
    moment is one sample); on 16 rollouts that is the largest policy change of the run. Returns the factor."""
    factor = ops.linear_with_floor_lr(step, 1, 1.0, 1.0, cfg.warmup_steps)
    peaks = [cfg.learning_rate, getattr(cfg, "value_learning_rate", cfg.learning_rate)]
    for group, peak in zip(opt.param_groups, peaks):
        group["lr"] = peak * factor
    return factor


def policy_update(models: Models, opt, sc: Scored, kl_coef: float, cfg: PPOConfig, device, amp, gen,
                  iteration: int = 0) -> dict[str, float]:
    """Step C: clipped surrogate on the advantages (+ beta * exact KL when kl_mode=loss, + beta * k3 KL on the
    sampled tokens when kl_mode=k3, GRPO's; + vf_coef * the clipped value loss when the critic is a value head
    on the policy's backbone, critic=shared: the same forward pass gives both). `iteration` (0-based) places the
    optimizer steps in the learning-rate warm-up (every iteration takes the same number of steps)."""
    models.policy.train()
    head = getattr(models, "value_head", None)
    return_std = None
    if head is not None and cfg.value_loss == "sigma":
        return_std = distributed.masked_mean_var(sc.returns, sc.mask)[1].sqrt().item()
    stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "policy_grad_norm", "ratio_max")}
    tw = TokenWeighted()
    trained = models.trained_with_policy() if head is not None else models.policy
    first_dev = 0.0  # max |ratio - 1| in epoch 1's first minibatch: ~0 unless old and new log-probs disagree
    steps_per_iteration = cfg.ppo_epochs * -(-len(sc.rollout) // _minibatch_rows(cfg))
    lr_factor = 1.0
    for step, micro in enumerate(_minibatches(len(sc.rollout), cfg, gen)):
        lr_factor = warm_up(opt, cfg, iteration * steps_per_iteration + step)
        n_tokens = _global_tokens(sc.mask, micro)
        total, v_total = 0.0, 0.0
        for idx in micro:
            args = sc.rollout.model_inputs(idx, device)
            mask = sc.mask[idx].to(device)
            with amp():
                if head is not None:
                    lp, ent, logits, v = response_logprobs_and_values(models.policy, head, *args,
                                                                      cfg.generation.temperature, with_entropy=True)
                else:
                    lp, ent, logits = response_logprobs(models.policy, *args, cfg.generation.temperature,
                                                        with_entropy=True)
            loss, st = ops.ppo_policy_loss(lp.float(), sc.logprobs[idx].to(device), sc.advantages[idx].to(device),
                                           mask, cfg.clip_eps, normalizer=n_tokens.to(device))
            if cfg.kl_mode == "loss":
                with torch.no_grad(), amp(), models.reference_model() as ref:
                    ref_logits = response_logprobs(ref, *args, cfg.generation.temperature)[2]
                full_kl = ops.full_kl_from_logits(logits, ref_logits, cfg.generation.temperature)
                kl_term = ops.masked_sum(full_kl, mask) / n_tokens.to(device)
                loss = loss + kl_coef * kl_term
                tw.add("kl_loss", ops.masked_mean(full_kl.detach(), mask), float(mask.sum()))
            elif cfg.kl_mode == "k3":  # GRPO: k3 estimate of KL(pi || ref) on the sampled tokens, in the loss
                kl_tok = ops.kl(lp.float(), sc.ref_logprobs[idx].to(device), "k3")
                loss = loss + kl_coef * ops.masked_sum(kl_tok, mask) / n_tokens.to(device)
                tw.add("kl_loss", ops.masked_mean(kl_tok.detach(), mask), float(mask.sum()))
            _check_finite_loss(loss, "policy loss")
            total += loss.item()
            if head is not None:  # critic=shared: the value loss joins the policy's in one backward pass
                v_loss, v_st = ops.ppo_value_loss(v, sc.values[idx].to(device), sc.returns[idx].to(device), mask,
                                                  cfg.value_clip_eps, normalizer=n_tokens.to(device),
                                                  return_std=return_std)
                _check_finite_loss(v_loss, "value loss")
                loss = loss + cfg.vf_coef * v_loss
                v_total += v_loss.item()
                tw.add("vf_clipfrac", v_st["vf_clipfrac"], float(mask.sum()))
            distributed.backward(loss, trained)
            n = float(mask.sum())
            tw.add("clipfrac", st["clipfrac"], n)
            tw.add("approx_kl", st["approx_kl"], n)
            tw.add("entropy", ops.masked_mean(ent, mask), n)
            stats["ratio_max"].append(st["ratio_max"].item())
            if step == 0:
                first_dev = max(first_dev, st["ratio_dev_max"].item())
        stats["policy_grad_norm"].append(_named_step(opt, trained, cfg.max_grad_norm, "policy"))
        stats["policy_loss"].append(total)
        if head is not None:
            stats.setdefault("value_loss", []).append(v_total)
    ratio_max, first_dev = distributed.all_reduce_floats([max(stats.pop("ratio_max")), first_dev], "max")
    return {**_mean_over_steps(stats), "ratio_max": ratio_max, "ratio_dev_first_minibatch": first_dev,
            "lr": cfg.learning_rate * lr_factor, **tw.result()}


def _check_finite_loss(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what} is {loss.item()}")
