"""A held-out learning signal during RL training (`ppo.validation`, `grpo.validation`).

The training batch is a poor view of progress: 16 answers to 4 prompts, scored after a baseline. Every
`every` iterations the policy instead answers a fixed set of validation prompts (never trained on: their ids
are taken out of the training prompts) with fixed seeds, and
1) the reward source scores the answers (raw: before the EOS rule, any baseline or whitening);
2) a judge compares each answer with the *initial* policy's answer to the same prompt and seed, in both orders
   (ties = ½), as `rlaif eval` does on the held-out prompts.
The initial policy's answers are taken once before the first iteration and kept in `validation_initial.jsonl`,
so a resumed run compares with the same answers. Sampling runs under its own RNG (`torch.random.fork_rng`): the
training run is the same with validation on or off. Every process computes the same figures (the same seeds;
sharded models are gathered for sampling as in the rollouts).

Logged in the iteration's metrics row: `val_reward_mean`, `val_reward_gain` (over the initial policy's
answers) with `val_reward_gain_se` (its standard error over the paired answers: a gain beyond about twice it is
beyond the noise of these prompts and samples), `val_win_rate` (against them), `val_length`, `val_eos_rate`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed, ops
from ..config import ConfigError, field, require_min
from ..data.jsonl import append_jsonl
from ..data.prompts import PromptRow, load_prompts
from ..judges import JudgeConfig, judge_pairs_both_orders, make_judge
from ..rollout.generate import sample_responses

log = logging.getLogger("rlaif.validation")

INITIAL_FILE = "validation_initial.jsonl"


@dataclass
class ValidationConfig:
    prompts: str | None = field(None, help="validation prompt JSONL or builtin:demo-val (never trained on: "
                                "these ids are left out of the training prompts); None = no validation")
    every: int = field(4, help="validate after every N iterations (and after the last)")
    max_prompts: int = field(0, help="the first N validation prompts only (0 = all)")
    samples_per_prompt: int = field(1, help="answers per validation prompt")
    seed: int = field(1234, help="sampling seed of the validation answers (the same at every validation)")
    judge_win_rate: bool = field(True, help="judge the answers against the initial policy's (false: reward only)")
    judge: JudgeConfig = field(default_factory=JudgeConfig, help="the judge of the validation win-rate (`rlaif "
                               "pipeline` uses eval.judge)")
    use_references: bool = field(True, help="show the prompts' reference answers to the judge")

    def check(self, stage: str) -> None:
        """Called by the stage config (ppo, grpo), so that errors name the full key."""
        require_min(self, f"{stage}.validation", 1, "every", "samples_per_prompt")
        require_min(self, f"{stage}.validation", 0, "max_prompts")
        if self.prompts is not None and self.judge_win_rate:
            self.judge.validate()

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)


def training_prompts(rows: list[PromptRow], cfg: ValidationConfig, stage: str) -> list[PromptRow]:
    """The training prompts without the validation prompts' ids."""
    if not cfg.enabled:
        return rows
    held = {r.id for r in load_prompts(cfg.prompts)}  # type: ignore[arg-type]
    kept = [r for r in rows if r.id not in held]
    if not kept:
        raise ConfigError(f"config key '{stage}.validation.prompts': every training prompt is a validation prompt")
    if len(kept) < len(rows):
        log.info("%s: %d validation prompts left out of the %d training prompts", stage, len(rows) - len(kept),
                 len(rows))
    return kept


class Validator:
    """`validate(policy)` -> the metrics above; `start(policy, out, resumed)` first."""

    def __init__(self, cfg: ValidationConfig, tokenizer, reward_fn, generation, device, amp):
        prompts = load_prompts(cfg.prompts)  # type: ignore[arg-type]
        if cfg.max_prompts:
            prompts = prompts[:cfg.max_prompts]
        self.cfg, self.tokenizer, self.reward_fn, self.gen = cfg, tokenizer, reward_fn, generation
        self.device, self.amp = device, amp
        self.rows = [r for r in prompts for _ in range(cfg.samples_per_prompt)]
        self.judge = make_judge(cfg.judge, device=device, autocast=amp, key="validation.judge") if cfg.judge_win_rate else None
        self.initial: list[str] = []
        self.initial_rewards = torch.zeros(0)  # (n,) the initial policy's answer rewards, paired with each answer

    def _answers(self, policy) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self.gen
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)
            rollout, _ = sample_responses(
                policy, self.tokenizer, self.rows, max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                top_p=g.top_p, min_new_tokens=g.min_new_tokens, max_prompt_tokens=g.max_prompt_tokens,
                batch_size=g.batch_size, device=self.device, autocast=self.amp())
            reward = self.reward_fn(rollout.prompts, rollout.responses, rows=self.rows)
        return rollout.responses, reward.float(), rollout.response_mask.sum(1).float(), rollout.ended_with_eos

    def start(self, policy, out: Path, resumed: bool) -> None:
        """The initial policy's answers: taken now (a fresh run), or read back (a resumed one)."""
        path = out / INITIAL_FILE
        if resumed and path.exists():
            saved = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if [s["id"] for s in saved] == [r.id for r in self.rows]:
                self.initial = [s["answer"] for s in saved]
                self.initial_rewards = torch.tensor([float(s["reward"]) for s in saved])
                return
            log.warning("%s does not match the validation prompts: taking the initial answers again", path)
        answers, reward, _, _ = self._answers(policy)
        # kept as written, so a resumed run pairs with the same figures
        self.initial, self.initial_rewards = answers, torch.tensor([round(r, 6) for r in reward.tolist()])
        if distributed.is_main():
            path.unlink(missing_ok=True)
            for row, a, r in zip(self.rows, answers, self.initial_rewards.tolist()):
                append_jsonl(path, {"id": row.id, "answer": a, "reward": r})
        log.info("validation: %d answers of the initial policy, reward %.3f", len(answers),
                 float(self.initial_rewards.mean()))

    def validate(self, policy) -> dict[str, float]:
        answers, reward, length, ended = self._answers(policy)
        gain, gain_se = ops.paired_difference(reward, self.initial_rewards)
        out = {"val_reward_mean": float(reward.mean()), "val_reward_gain": gain, "val_reward_gain_se": gain_se,
               "val_length": float(length.mean()), "val_eos_rate": float(ended.float().mean())}
        if self.judge is not None:
            refs = [r.reference for r in self.rows] if self.cfg.use_references else None
            verdicts = judge_pairs_both_orders(self.judge, [r.text for r in self.rows], answers, self.initial, refs)
            prob = torch.tensor([v.label_prob for v in verdicts], dtype=torch.float64)
            out["val_win_rate"] = float(ops.win_outcomes(prob).mean())
        return out


def due(cfg: ValidationConfig, iteration: int, last: int) -> bool:
    """Validate after this (1-based) iteration?"""
    return cfg.enabled and (iteration % cfg.every == 0 or iteration == last)


def start_validation(cfg, models, reward_fn, out: Path, device, amp, resumed: bool) -> Validator | None:
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
        log.info("validation after iteration %d: reward %.3f (%+.3f ± %.3f s.e. vs initial policy)%s, len %.1f, "
                 "eos %.2f", iteration, row["val_reward_mean"], row["val_reward_gain"],
                 row.get("val_reward_gain_se", float("nan")), win, row["val_length"], row["val_eos_rate"])


__all__ = ["ValidationConfig", "Validator", "training_prompts", "due"]
