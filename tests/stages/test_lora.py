"""LoRA policies whose reference is the same model with adapters disabled, and gradient checkpointing, in PPO
and GRPO on tiny random Llamas: KL exactly 0 before any update, only adapters train, the merged policy loads,
resume equals an uninterrupted run, checkpointing does not change the update, bad config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import interrupt_after_checkpoint
from safetensors.torch import load_file

from rlaif.cli import main as cli_main
from rlaif.config import ConfigError, load_config
from rlaif.configs import RootConfig
from rlaif.data.prompts import PromptRow
from rlaif.metrics import read_metrics
from rlaif.models.loading import load_causal_lm
from rlaif.models.lora import LoraConfig, is_lora
from rlaif.rollout.generate import sample_responses
from rlaif.rollout.scoring import policy_logits
from rlaif.runtime import autocast_for
from rlaif.stages import grpo, ppo

from .test_grpo import grpo_args
from .test_ppo_smoke import ppo_overrides

pytest.importorskip("peft")

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")
LORA = ("ppo.lora.r=4", "ppo.lora.alpha=8", "run.threads=1")


def capture(monkeypatch, module, name: str) -> dict:
    """Wrap `module.name` (build_models / load_policy_and_reference): keep the Models the trainer uses and a
    snapshot of the policy's initial parameters."""
    seen: dict = {}
    original = getattr(module, name)

    def wrapper(*args):
        models = original(*args)
        seen["models"] = models
        seen["p0"] = {k: v.detach().clone() for k, v in models.policy.named_parameters()}
        return models

    monkeypatch.setattr(module, name, wrapper)
    return seen


def probe_inputs(vocab: int) -> tuple[torch.Tensor, ...]:
    """(prompt ids, prompt mask, response ids, response mask) of two fixed sequences."""
    g = torch.Generator().manual_seed(7)
    p, r = torch.randint(3, vocab, (2, 5), generator=g), torch.randint(3, vocab, (2, 4), generator=g)
    return p, torch.ones_like(p, dtype=torch.bool), r, torch.ones_like(r, dtype=torch.bool)


def assert_only_adapters_changed(policy, p0: dict) -> None:
    names = [k for k, _ in policy.named_parameters()]
    assert any("lora_" in k for k in names)
    for k, v in policy.named_parameters():
        if "lora_" in k:
            assert v.requires_grad and not torch.equal(v, p0[k]), f"adapter {k} did not change"
        else:
            assert not v.requires_grad and torch.equal(v, p0[k]), f"base weight {k} changed"


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft reads a deprecated name
@pytest.mark.parametrize("kl_mode", ["reward", "loss"])
def test_lora_ppo_reference_is_the_base_model(tmp_path, tiny_model_dir, prompts_file, monkeypatch, kl_mode):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    seen = capture(monkeypatch, ppo, "build_models")
    out = tmp_path / "run"
    assert cli_main(["ppo", *ppo_overrides(out, tiny_model_dir, prompts_file, *LORA, f"ppo.kl_mode={kl_mode}")]) == 0
    rows = read_metrics(out)
    models = seen["models"]
    assert is_lora(models.policy) and models.reference is None  # no second copy was loaded

    # before any update the policy is its reference: the KL of the first iteration is exactly 0
    assert rows[0]["kl"] == 0.0
    if kl_mode == "loss":
        assert rows[0]["kl_loss"] == 0.0  # the exact full-vocabulary KL of the first (only) minibatch
    # after an update it is not: the reference is the frozen base, not the moving policy
    assert math.isfinite(rows[1]["kl"]) and rows[1]["kl"] != 0.0

    assert_only_adapters_changed(models.policy, seen["p0"])
    base = load_causal_lm(tiny_model_dir).eval()
    probe = probe_inputs(base.config.vocab_size)
    with torch.no_grad():
        with models.reference_model() as ref:
            ref_logits = policy_logits(ref, *probe)
        base_logits = policy_logits(base, *probe)
        trained_logits = policy_logits(models.policy.eval(), *probe)
    assert torch.equal(ref_logits, base_logits)  # adapters disabled = the untouched base weights, exactly
    assert not torch.allclose(trained_logits, base_logits)

    # policy/: the merged model in plain HF format; policy_adapter/: the adapter alone, on the base model
    merged = AutoModelForCausalLM.from_pretrained(out / "policy").eval()
    assert set(load_file(str(out / "policy" / "model.safetensors"))) <= set(base.state_dict())
    adapted = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), out / "policy_adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(policy_logits(merged, *probe), trained_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(policy_logits(adapted, *probe), trained_logits, atol=1e-6, rtol=1e-6)


def test_lora_judge_baseline_answers_come_from_the_base_model(tiny_model_dir):
    """Pairwise judge reward: the reference answers are the base model's greedy answers, not the policy's."""
    cfg = load_config(RootConfig, None, [
        f"ppo.policy={tiny_model_dir}", "ppo.lora.r=4", "ppo.reward.judge_mode=pairwise",
        "ppo.reward.judge.backend=function", f"ppo.reward.judge.function={REWARDS}:shorter_wins_first_biased",
        "ppo.generation.max_new_tokens=6"]).ppo
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    models = ppo.load_policy_and_reference(cfg.policy, None, cpu, cfg.lora)
    with torch.no_grad():  # move the policy away from the base
        for name, p in models.policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 2.0)
    [source] = ppo.judge_reward_sources(cfg, models, cpu, autocast_for(cpu, "fp32"))
    rows = [PromptRow(f"q{i}", (("user", q),)) for i, q in enumerate(["Name a colour.", "Why is the sky blue?",
                                                                      "What is 2 plus 2?"])]

    def greedy(model) -> list[str]:
        return sample_responses(model, models.tokenizer, rows, max_new_tokens=6, temperature=0.0)[0].responses

    baseline = source.baseline_fn(rows)
    assert baseline == greedy(load_causal_lm(tiny_model_dir))
    assert baseline != greedy(models.policy)


def test_lora_with_a_named_reference_loads_it(tiny_model_dir, eos_model_dir):
    """ppo.reference set together with LoRA: that model is the anchor (a second model, as asked)."""
    models = ppo.load_policy_and_reference(tiny_model_dir, eos_model_dir, torch.device("cpu"), LoraConfig(r=2))
    assert is_lora(models.policy) and models.reference is not None
    assert not any(p.requires_grad for p in models.reference.parameters())
    with models.reference_model() as ref:
        assert ref is models.reference


def test_lora_resume_equals_uninterrupted(tmp_path, eos_model_dir, prompts_file, monkeypatch):
    """Interrupted after checkpoint 2 of 3 and resumed == one 3-iteration run: adapter weights, AdamW moments
    (adapters only), KL controller, RNGs and prompt position all come back."""
    def args(out) -> list[str]:
        return ["ppo", f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.resume=auto",
                "run.threads=1", f"ppo.policy={eos_model_dir}", f"ppo.prompts={prompts_file}",
                f"ppo.reward.function={REWARDS}:length_reward", "ppo.iterations=3", "ppo.batch_size=4",
                "ppo.micro_batch_size=1", "ppo.gradient_accumulation_steps=2", "ppo.forward_batch_size=4",
                "ppo.generation.max_new_tokens=8", "ppo.learning_rate=0.01", "ppo.value_learning_rate=0.001",
                "ppo.checkpoint_every=1", "ppo.kl_target=0.5", "ppo.kl_horizon=100", "ppo.lora.r=4",
                "ppo.critic=separate", "ppo.old_logprobs=recompute"]  # the policy optimizer holds adapters only

    split, whole = tmp_path / "split", tmp_path / "whole"
    with monkeypatch.context() as mp:
        interrupt_after_checkpoint(mp, ppo, 2)
        assert cli_main(args(split)) == 130  # the CLI's exit status for an interrupted run
    assert [r["iteration"] for r in read_metrics(split)] == [1, 2]
    ck = split / "checkpoints" / "step-00000002"
    assert (ck / "policy" / "adapter_model.safetensors").is_file()
    assert not (ck / "policy" / "model.safetensors").exists()  # no full policy weights in a LoRA checkpoint
    n_adapter = len(load_file(str(ck / "policy" / "adapter_model.safetensors")))
    assert len(torch.load(ck / "optimizers.pt", weights_only=False)["policy"]["state"]) == n_adapter

    assert cli_main(args(split)) == 0
    assert cli_main(args(whole)) == 0
    resumed, straight = read_metrics(split), read_metrics(whole)
    assert [r["iteration"] for r in resumed] == [r["iteration"] for r in straight] == [1, 2, 3]
    for a, b in zip(resumed, straight):
        for k in ("reward_mean", "kl", "kl_coef", "policy_loss", "value_loss", "response_length"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["iteration"], k)
    assert straight[2]["kl"] != 0.0
    for folder, name in (("policy_adapter", "adapter_model.safetensors"), ("policy", "model.safetensors")):
        x, y = load_file(str(split / folder / name)), load_file(str(whole / folder / name))
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("lora", [0, 4])
def test_gradient_checkpointing_gives_the_same_update(tmp_path, tiny_model_dir, prompts_file, monkeypatch, lora):
    """Policy and critic recompute activations in the backward pass; the weights after one iteration match."""
    seen = capture(monkeypatch, ppo, "build_models")
    common = ("run.threads=1", "ppo.iterations=1", f"ppo.lora.r={lora}", "ppo.critic=separate",
              "ppo.old_logprobs=recompute")  # two models that both checkpoint
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    assert cli_main(["ppo", *ppo_overrides(plain, tiny_model_dir, prompts_file, *common)]) == 0
    assert cli_main(["ppo", *ppo_overrides(ckpt, tiny_model_dir, prompts_file, *common,
                                           "ppo.gradient_checkpointing=true")]) == 0
    models = seen["models"]
    for m in (models.policy, models.value):
        assert any(getattr(mod, "gradient_checkpointing", False) for mod in m.modules())
    a, b = read_metrics(plain)[0], read_metrics(ckpt)[0]
    for k in ("policy_loss", "value_loss", "policy_grad_norm", "value_grad_norm"):
        assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    x, y = (load_file(str(d / "policy" / "model.safetensors")) for d in (plain, ckpt))
    start = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    assert x.keys() == y.keys() and any(not torch.equal(x[k], start[k]) for k in x)  # the update moved weights
    for k in x:
        torch.testing.assert_close(x[k], y[k], atol=1e-6, rtol=1e-5)


def test_grpo_with_lora(tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = capture(monkeypatch, grpo, "load_policy_and_reference")
    out = tmp_path / "grpo"
    assert cli_main(["grpo", *grpo_args(out, tiny_model_dir, prompts_file, "grpo.lora.r=4", "grpo.lora.alpha=8",
                                        "grpo.gradient_checkpointing=true")]) == 0
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] != 0.0
    for r in rows:
        for k in ("reward_mean", "policy_loss", "kl_loss", "entropy"):
            assert math.isfinite(r[k]), (k, r[k])
    models = seen["models"]
    assert models.reference is None and models.value is None
    assert_only_adapters_changed(models.policy, seen["p0"])
    AutoModelForCausalLM.from_pretrained(out / "policy")
    assert (out / "policy_adapter" / "adapter_config.json").is_file()


def test_lora_bad_config(tmp_path, tiny_model_dir, prompts_file, capsys):
    for overrides, key in ((["ppo.lora.r=-1"], "ppo.lora.r"),
                           (["ppo.lora.r=4", "ppo.lora.alpha=0"], "ppo.lora.alpha"),
                           (["ppo.lora.r=4", "ppo.lora.dropout=1.0"], "ppo.lora.dropout"),
                           (["ppo.lora.r=4", "ppo.lora.target_modules=[]"], "ppo.lora.target_modules"),
                           (["grpo.lora.r=4", "grpo.lora.alpha=-2"], "grpo.lora.alpha")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(RootConfig, None, overrides)
    args = ppo_overrides(tmp_path, tiny_model_dir, prompts_file, *LORA, "ppo.lora.target_modules=[qq_proj]")
    assert cli_main(["ppo", *args]) == 2
    assert "lora.target_modules" in capsys.readouterr().err


@pytest.mark.slow
def test_lora_on_smollm2_kl_starts_at_exactly_zero(tmp_path, smollm2_dir, prompts_file, monkeypatch):
    """The real SmolLM2-135M with rank-8 adapters and reference-by-disabled-adapters: no reference copy, KL of
    the first iteration exactly 0, then moving once the adapters have been updated."""
    seen = capture(monkeypatch, ppo, "build_models")
    out = tmp_path / "run"
    args = ppo_overrides(out, smollm2_dir, prompts_file, "run.threads=1", "ppo.lora.r=8", "ppo.batch_size=2",
                         "ppo.micro_batch_size=1", "ppo.forward_batch_size=2", "ppo.generation.batch_size=2",
                         "ppo.learning_rate=0.001", "ppo.generation.max_new_tokens=8",
                         "ppo.old_logprobs=recompute")  # the KL from two identical full passes: exactly 0
    assert cli_main(["ppo", *args]) == 0
    rows = read_metrics(out)
    assert seen["models"].reference is None
    assert rows[0]["kl"] == 0.0
    assert math.isfinite(rows[1]["kl"]) and rows[1]["kl"] != 0.0
