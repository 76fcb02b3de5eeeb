"""`rlaif eval`: is the aligned policy better than its baseline, and did it get there honestly?

1) sample `samples_per_prompt` answers per held-out prompt from the policy and from the baseline (default:
the starting / SFT policy), with the same per-prompt seeds; 2) judge every (policy, baseline) pair in both
orders -> P(policy better); outcome 1 / ½ / 0; win-rate = mean outcome with a percentile-bootstrap 95 %
interval over prompts (the answers of one prompt are resampled together); 3) per system: mean reward-model score
(every `reward_models` entry; several give an ensemble disagreement), KL to the reference (sampled estimate:
Σ_t log π(y_t) − log π_ref(y_t) over the system's own answers, at the sampling temperature), mean length in
tokens, distinct-2, EOS rate; 4) reward-hacking monitors, each with a threshold and a warning: reward–length
correlation, reward-model vs judge disagreement, ensemble disagreement, KL; 5) `eval.json` +
`samples.jsonl` in the output folder and a summary on the console.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from dataclasses import field as dc_field

import torch
from tqdm.auto import tqdm

from .. import ops
from ..checkpoint import save_json
from ..config import ConfigError, field, require_min
from ..data.jsonl import append_jsonl
from ..data.prompts import PromptRow, load_prompts
from ..judges import JudgeConfig, judge_pairs_both_orders, make_judge, verdict_stats
from ..models.loading import load_causal_lm, load_tokenizer
from ..rewards.sources import ModelReward
from ..rollout.generate import Rollout, sample_responses
from ..rollout.scoring import response_logprobs
from ..runtime import RunConfig, autocast_for, setup_run
from .label import prompt_seed

log = logging.getLogger("rlaif.eval")


@dataclass
class EvalConfig:
    policy: str = field("runs/ppo/policy", help="the policy to evaluate (folder, built-in name, .gguf or hub id)")
    baseline: str = field("smollm2-135m-instruct", help="what it is compared with: the SFT / starting policy")
    reference: str | None = field(None, help="KL anchor (default: the baseline)")
    prompts: str = field("builtin:demo-heldout", help="held-out prompt JSONL (never trained on) or "
                         "builtin:demo-heldout")
    max_prompts: int = field(0, help="evaluate the first N prompts only (0 = all)")
    samples_per_prompt: int = field(1, help="answers per prompt and system (pairs are formed in order)")
    temperature: float = field(0.7, help="sampling temperature (0 = greedy: then KL is not a sampled estimate)")
    top_p: float = field(1.0, help="nucleus sampling")
    max_new_tokens: int = field(64, help="budget of new tokens per answer")
    max_prompt_tokens: int = field(512, help="longer prompts keep their last tokens")
    batch_size: int = field(16, help="prompts per generate() / forward call")
    judge: JudgeConfig = field(default_factory=JudgeConfig, help="the judge of the win-rate")
    use_references: bool = field(True, help="show the prompts' reference answers to the judge")
    reward_models: list[str] = field(default_factory=list, help="reward model(s) for the mean score and the "
                                     "monitors (e.g. the `rlaif rm` output); empty = no reward figures")
    reward_max_length: int = field(512, help="tokens a reward model sees")
    bootstrap_samples: int = field(2000, help="bootstrap resamples for the win-rate interval")
    length_corr_threshold: float = field(0.5, help="warn when corr(reward, length) over the policy's answers "
                                         "exceeds this (reward hacking by length)")
    disagreement_threshold: float = field(0.4, help="warn when the reward model and the judge disagree on more "
                                          "than this share of (policy, baseline) pairs")
    ensemble_std_threshold: float = field(0.5, help="warn when the mean std across reward models exceeds this "
                                          "(in reward units; needs 2+ reward_models)")
    kl_threshold: float = field(20.0, help="warn when the policy's KL to the reference exceeds this (nats)")

    def validate(self) -> None:
        require_min(self, "eval", 0, "max_prompts")
        require_min(self, "eval", 1, "samples_per_prompt", "max_new_tokens", "max_prompt_tokens", "batch_size",
                    "bootstrap_samples")
        if self.temperature < 0:
            raise ConfigError("config key 'eval.temperature': must be >= 0")
        self.judge.validate()


@dataclass
class SystemAnswers:
    name: str
    rollout: Rollout
    rewards: list[torch.Tensor] = dc_field(default_factory=list)  # one (n,) tensor per reward model
    kl: torch.Tensor | None = None  # (n,) sequence KL to the reference


# ---------------------------------------------------------------------------------------------------------
# helpers (each a step of the evaluation)


def answer(model_arg: str, rows: list[PromptRow], cfg: EvalConfig, seed: int, device, amp, desc: str,
           progress: bool) -> tuple[SystemAnswers, torch.nn.Module, object]:
    """Step 1: one batch of answers per prompt chunk; each chunk seeded from (seed, first prompt id), so the
    policy and the baseline draw from the same seeds and a rerun gives the same answers."""
    tok = load_tokenizer(model_arg, padding_side="left")
    model = load_causal_lm(model_arg, device=device).eval().requires_grad_(False)
    parts = []
    for s in tqdm(range(0, len(rows), cfg.batch_size), desc=desc, disable=not progress):
        chunk = rows[s:s + cfg.batch_size]
        torch.manual_seed(prompt_seed(seed, chunk[0].id))
        rollout, _ = sample_responses(model, tok, chunk, max_new_tokens=cfg.max_new_tokens,
                                      temperature=cfg.temperature, top_p=cfg.top_p,
                                      max_prompt_tokens=cfg.max_prompt_tokens, batch_size=cfg.batch_size,
                                      device=device, autocast=amp())
        parts.append(rollout)
    return SystemAnswers(model_arg, concat_rollouts(parts, tok.pad_token_id)), model, tok


def concat_rollouts(parts: list[Rollout], pad: int) -> Rollout:
    """Rollouts of different widths as one: prompts stay left-padded, responses right-padded."""

    def stack(tensors: list[torch.Tensor], fill, left: bool) -> torch.Tensor:
        width = max(t.shape[1] for t in tensors)
        out = tensors[0].new_full((sum(t.shape[0] for t in tensors), width), fill)
        row = 0
        for t in tensors:
            cols = slice(width - t.shape[1], width) if left else slice(0, t.shape[1])
            out[row:row + t.shape[0], cols] = t
            row += t.shape[0]
        return out

    return Rollout(
        prompt_ids=stack([p.prompt_ids for p in parts], pad, True),
        prompt_mask=stack([p.prompt_mask for p in parts], 0, True),
        response_ids=stack([p.response_ids for p in parts], pad, False),
        response_mask=stack([p.response_mask for p in parts], False, False),
        ended_with_eos=torch.cat([p.ended_with_eos for p in parts]),
        prompts=[q for p in parts for q in p.prompts], responses=[a for p in parts for a in p.responses],
    )


@torch.no_grad()
def sequence_kl(model, reference, rollout: Rollout, cfg: EvalConfig, device, amp) -> torch.Tensor:
    """Step 3: (n,) Σ_t log π(y_t|x, y<t) − log π_ref(y_t|x, y<t) over each answer's real tokens."""
    temp = cfg.temperature if cfg.temperature > 0 else 1.0
    out = []
    for s in range(0, len(rollout), cfg.batch_size):
        args = rollout.model_inputs(list(range(s, min(s + cfg.batch_size, len(rollout)))), device)
        with amp():
            lp = response_logprobs(model, *args, temp)[0].float().cpu()
            ref = response_logprobs(reference, *args, temp)[0].float().cpu()
        mask = args[3].float().cpu()
        out.append(((lp - ref) * mask).sum(1))
    return torch.cat(out)


def system_stats(sys: SystemAnswers) -> dict[str, float | None]:
    r = sys.rollout
    rewards = torch.stack(sys.rewards).mean(0) if sys.rewards else None
    return {
        "reward_mean": float(rewards.mean()) if rewards is not None else None,
        "kl_mean": float(sys.kl.mean()) if sys.kl is not None else None,
        "length_mean": float(r.response_mask.sum(1).float().mean()),
        "distinct_2": ops.distinct_n(r.responses, 2),
        "eos_rate": float(r.ended_with_eos.float().mean()),
    }


def monitors(policy: SystemAnswers, baseline: SystemAnswers, prob: torch.Tensor, cfg: EvalConfig) -> list[dict]:
    """Step 4: reward-hacking monitors; each {name, value, threshold, warning, about}."""
    out = []

    def add(name: str, value: float, threshold: float, about: str) -> None:
        out.append({"name": name, "value": value, "threshold": threshold, "warning": bool(value > threshold),
                    "about": about})

    if policy.rewards:
        reward = torch.stack(policy.rewards).mean(0)
        length = policy.rollout.response_mask.sum(1).float()
        add("reward_length_correlation", ops.pearson(reward, length), cfg.length_corr_threshold,
            "Pearson correlation of the reward-model score with answer length over the policy's answers: a high "
            "value means the reward can be gamed by writing more")
        margin_rm = reward - torch.stack(baseline.rewards).mean(0)
        add("rm_judge_disagreement", ops.sign_disagreement(margin_rm, prob - 0.5), cfg.disagreement_threshold,
            "share of (policy, baseline) pairs where the reward model and the judge prefer different answers")
        if len(policy.rewards) > 1:
            add("ensemble_std", float(torch.stack(policy.rewards).std(0, unbiased=True).mean()),
                cfg.ensemble_std_threshold, "mean disagreement (std) of the reward-model ensemble on the policy's "
                "answers: high where the policy left the reward models' training distribution")
    if policy.kl is not None:
        add("kl_to_reference", float(policy.kl.mean()), cfg.kl_threshold,
            "sampled KL(policy || reference) in nats per answer: far from the reference, the reward model is "
            "extrapolating")
    return out


# ---------------------------------------------------------------------------------------------------------
# the evaluation


def evaluate(run: RunConfig, cfg: EvalConfig, resolved_config: dict | None = None) -> dict:
    """Run the evaluation; returns the eval.json content."""
    t_start = time.time()
    out, device = setup_run(run)
    amp = autocast_for(device, run.precision)
    prompts = load_prompts(cfg.prompts)
    if cfg.max_prompts:
        prompts = prompts[:cfg.max_prompts]
    rows = [r for r in prompts for _ in range(cfg.samples_per_prompt)]
    judge = make_judge(cfg.judge, device=device, autocast=amp, key="eval.judge")  # a bad judge fails before minutes of sampling

    # 1. answers from both systems (same seeds); KL of each to the reference
    policy, pmodel, _ = answer(cfg.policy, rows, cfg, run.seed, device, amp, "eval: policy", run.progress)
    baseline, bmodel, _ = answer(cfg.baseline, rows, cfg, run.seed, device, amp, "eval: baseline", run.progress)
    ref_arg = cfg.reference or cfg.baseline
    reference = bmodel if ref_arg == cfg.baseline else load_causal_lm(ref_arg, device=device).eval()
    policy.kl = sequence_kl(pmodel, reference, policy.rollout, cfg, device, amp)
    baseline.kl = (torch.zeros(len(rows)) if ref_arg == cfg.baseline
                   else sequence_kl(bmodel, reference, baseline.rollout, cfg, device, amp))
    del pmodel, bmodel, reference

    # 2. judge every pair in both orders
    refs = [r.reference for r in rows] if cfg.use_references else None
    verdicts = judge_pairs_both_orders(judge, [r.text for r in rows], policy.rollout.responses,
                                       baseline.rollout.responses, refs)
    prob = torch.tensor([v.label_prob for v in verdicts], dtype=torch.float64)
    outcomes = ops.win_outcomes(prob)
    per_prompt = outcomes.view(len(prompts), cfg.samples_per_prompt).mean(1)  # resample prompts, not answers
    lo, hi = ops.bootstrap_mean_ci(per_prompt, cfg.bootstrap_samples, 0.95, seed=run.seed)

    # 3. reward-model scores
    for rm_arg in cfg.reward_models:
        rm = ModelReward(rm_arg, device=device, max_length=cfg.reward_max_length, batch_size=cfg.batch_size)
        for sys in (policy, baseline):
            sys.rewards.append(rm(sys.rollout.prompts, sys.rollout.responses))
        del rm

    # 4. monitors, 5. outputs
    mons = monitors(policy, baseline, prob, cfg)
    warnings = [f"{m['name']} = {m['value']:.3f} > {m['threshold']}: {m['about']}" for m in mons if m["warning"]]
    result = {
        "policy": cfg.policy, "baseline": cfg.baseline, "reference": ref_arg, "judge": judge.metadata(),
        "prompts": len(prompts), "samples_per_prompt": cfg.samples_per_prompt, "pairs": len(rows),
        "win_rate": float(outcomes.mean()), "win_rate_ci": [lo, hi], "ci_level": 0.95,
        "wins": int((outcomes == 1).sum()), "losses": int((outcomes == 0).sum()),
        "ties": int((outcomes == 0.5).sum()), "bootstrap_samples": cfg.bootstrap_samples,
        "judge_stats": verdict_stats(verdicts),
        "policy_stats": system_stats(policy), "baseline_stats": system_stats(baseline),
        "monitors": mons, "warnings": warnings, "wall_time_s": round(time.time() - t_start, 1),
    }
    samples_path = out / "samples.jsonl"
    samples_path.unlink(missing_ok=True)
    pr = torch.stack(policy.rewards).mean(0).tolist() if policy.rewards else [None] * len(rows)
    br = torch.stack(baseline.rewards).mean(0).tolist() if baseline.rewards else [None] * len(rows)
    for i, (row, v) in enumerate(zip(rows, verdicts)):
        append_jsonl(samples_path, {
            "id": row.id, "prompt": row.text, "reference": row.reference,
            "baseline": baseline.rollout.responses[i], "policy": policy.rollout.responses[i],
            "prob_policy_better": round(v.label_prob, 6), "reward_baseline": pr_round(br[i]),
            "reward_policy": pr_round(pr[i]), "kl_policy": round(float(policy.kl[i]), 4),
        })
    save_json(out / "eval.json", result)
    print_summary(result)
    for w in warnings:
        log.warning("monitor: %s", w)
    return result


def pr_round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 6)


def print_summary(r: dict) -> None:
    lo, hi = r["win_rate_ci"]
    print(f"win-rate of {r['policy']} vs {r['baseline']}: {r['win_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}; "
          f"{r['wins']} wins, {r['ties']} ties, {r['losses']} losses over {r['pairs']} pairs, judge "
          f"{r['judge']['judge']})")
    keys = ("reward_mean", "kl_mean", "length_mean", "distinct_2", "eos_rate")
    print(f"{'':10s}" + "".join(f"{k:>13s}" for k in keys))
    for name in ("policy", "baseline"):
        s = r[f"{name}_stats"]
        print(f"{name:10s}" + "".join(f"{'n/a':>13s}" if s[k] is None else f"{s[k]:13.3f}" for k in keys))
    for m in r["monitors"]:
        flag = "WARNING" if m["warning"] else "ok"
        value = m["value"] if math.isfinite(m["value"]) else float("nan")
        print(f"monitor {m['name']:28s} {value:8.3f} (threshold {m['threshold']}) {flag}")


__all__ = ["EvalConfig", "evaluate"]
