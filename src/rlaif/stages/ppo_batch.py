"""One RL iteration's batch after sampling (ppo, grpo): the prompt stream, scoring (old and reference
log-probs, values), the EOS policy, rewards and advantages, and the iteration's metrics row."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import distributed, ops
from ..data.prompts import PromptRow
from ..rollout.generate import Rollout
from ..rollout.scoring import response_logprobs, response_logprobs_and_values, response_values
from .ppo_config import PPOConfig
from .rl_models import Models


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


def iteration_metrics(sc: Scored, stats: dict, seq_kl: float, beta: float, n_tok: int, n_trunc: int, dt: float,
                       t_gen: float, t_score: float, t_update: float, kl_in_reward: bool = True) -> dict:
    """One metrics row of an iteration from its scored batch (every process's rows: `global_view`)."""
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
