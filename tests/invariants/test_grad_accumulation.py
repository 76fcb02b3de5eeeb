"""Micro-batch 1 x accumulation 4 must give the same update as micro-batch 4 x accumulation 1.

Losses are normalised by the token count of the whole minibatch (not per micro-batch), so splitting a
minibatch only changes the floating-point summation order. The rollouts have different lengths (some end
with EOS early), which is exactly where a per-micro-batch mean would break the equality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.metrics import read_metrics
from rlaif.stages import ppo, ppo_updates

REWARDS = Path(__file__).resolve().parents[1] / "stages" / "rewards_for_tests.py"


def _run(out: Path, policy: str, prompts: str, micro: int, accum: int, monkeypatch) -> dict:
    rec: dict = {"models": None, "grad_policy_rows": [], "grad_value_rows": [], "steps": [], "lengths": None}
    build, sample = ppo.build_models, ppo.sample_responses
    logprobs, values, step = ppo_updates.response_logprobs, ppo_updates.response_values, ppo_updates._step

    def build_models(cfg, device, *rest):
        m = build(cfg, device, *rest)
        rec["models"] = m
        rec["policy0"] = {k: v.detach().clone() for k, v in m.policy.named_parameters()}
        rec["value0"] = {k: v.detach().clone() for k, v in m.value.named_parameters()}
        return m

    def sample_responses(*a, **k):
        rollout, n = sample(*a, **k)
        rec["lengths"] = rollout.response_mask.sum(1).tolist()
        return rollout, n

    def response_logprobs(model, prompt_ids, *a, **k):
        if torch.is_grad_enabled() and model is rec["models"].policy:
            rec["grad_policy_rows"].append(prompt_ids.shape[0])
        return logprobs(model, prompt_ids, *a, **k)

    def response_values(model, prompt_ids, *a, **k):
        if torch.is_grad_enabled():
            rec["grad_value_rows"].append(prompt_ids.shape[0])
        return values(model, prompt_ids, *a, **k)

    def counting_step(opt, model, max_norm, what):
        rec["steps"].append("policy" if model is rec["models"].policy else "value")
        return step(opt, model, max_norm, what)

    with monkeypatch.context() as mp:
        mp.setattr(ppo, "build_models", build_models)
        mp.setattr(ppo, "sample_responses", sample_responses)
        mp.setattr(ppo_updates, "response_logprobs", response_logprobs)  # the updates' forward passes
        mp.setattr(ppo_updates, "response_values", response_values)
        mp.setattr(ppo_updates, "_step", counting_step)
        cfg = load_config(RootConfig, None, [
            f"run.output_dir={out}", "run.progress=false", "run.seed=0", f"ppo.policy={policy}",
            f"ppo.prompts={prompts}", f"ppo.reward.function={REWARDS}:length_reward", "ppo.iterations=1",
            "ppo.batch_size=4", f"ppo.micro_batch_size={micro}", f"ppo.gradient_accumulation_steps={accum}",
            "ppo.forward_batch_size=4", "ppo.generation.max_new_tokens=8", "ppo.generation.batch_size=4",
            "ppo.learning_rate=0.001", "ppo.value_learning_rate=0.001", "ppo.checkpoint_every=0",
            "ppo.max_grad_norm=1000.0", "ppo.critic=separate", "ppo.old_logprobs=recompute",  # both update paths
        ])
        ppo.train(cfg.run, cfg.ppo)
    rec["metrics"] = read_metrics(out)[0]
    return rec


def test_micro_batching_does_not_change_the_update(tmp_path, eos_model_dir, prompts_file, monkeypatch):
    big = _run(tmp_path / "4x1", eos_model_dir, prompts_file, 4, 1, monkeypatch)
    small = _run(tmp_path / "1x4", eos_model_dir, prompts_file, 1, 4, monkeypatch)

    # the two runs really micro-batched differently: one 4-row backward vs four 1-row backwards, one step each
    assert big["grad_policy_rows"] == [4] and big["grad_value_rows"] == [4]
    assert small["grad_policy_rows"] == [1, 1, 1, 1] and small["grad_value_rows"] == [1, 1, 1, 1]
    assert big["steps"] == small["steps"] == ["value", "policy"]
    # same rollouts, and their lengths differ (per-micro-batch means would not be equivalent)
    assert big["lengths"] == small["lengths"]
    assert len(set(big["lengths"])) > 1, big["lengths"]
    for key in ("reward_mean", "kl", "valid_rows", "return_mean"):
        assert big["metrics"][key] == small["metrics"][key], key
    # (entropy / clipfrac / approx_kl are means of per-micro-batch means, so they are not compared here)
    for key in ("policy_loss", "value_loss"):
        torch.testing.assert_close(small["metrics"][key], big["metrics"][key], atol=1e-5, rtol=1e-4)
    # the gradients themselves, not only the weights after one Adam step (Adam divides by the gradient's scale,
    # so weights alone cannot see a gradient that is off by a constant factor, e.g. a per-micro-batch mean
    # over 4 micro-batches summed instead of averaged); clipping is off (max_grad_norm 1000), these are raw
    for key in ("policy_grad_norm", "value_grad_norm"):
        assert big["metrics"][key] > 1e-3, key
        torch.testing.assert_close(small["metrics"][key], big["metrics"][key], atol=1e-6, rtol=1e-4)

    for which in ("policy", "value"):
        a = dict(getattr(big["models"], which).named_parameters())
        b = dict(getattr(small["models"], which).named_parameters())
        start = big[f"{which}0"]
        assert set(a) == set(b) == set(start)
        for name in a:
            # identical starting points ...
            assert torch.equal(start[name], small[f"{which}0"][name]), (which, name)
            # ... the update is the same ...
            torch.testing.assert_close(b[name].detach(), a[name].detach(), atol=1e-5, rtol=1e-4,
                                       msg=lambda m, w=which, n=name: f"{w}.{n}: {m}")
        # ... and it is not trivially zero: the weights moved by about one Adam step (lr = 1e-3)
        moved = max((a[n].detach() - start[n]).abs().max().item() for n in a)
        assert moved > 5e-4, (which, moved)
