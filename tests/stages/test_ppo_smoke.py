"""End-to-end PPO on a tiny random Llama: metrics, weights that move, a frozen reference, loadable outputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from rlaif.cli import main as cli_main
from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.metrics import read_metrics
from rlaif.stages import ppo, ppo_batch

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")
SEPARATE = ("ppo.critic=separate", "ppo.old_logprobs=recompute")  # the non-default critic, one key away


def ppo_overrides(out, policy: str, prompts: str, *extra: str, reward: str = "length_reward") -> list[str]:
    return [
        f"run.output_dir={out}", "run.progress=false", "run.seed=0",
        f"ppo.policy={policy}", f"ppo.prompts={prompts}", f"ppo.reward.function={REWARDS}:{reward}",
        "ppo.iterations=2", "ppo.batch_size=4", "ppo.micro_batch_size=2", "ppo.gradient_accumulation_steps=2",
        "ppo.forward_batch_size=4", "ppo.generation.max_new_tokens=8", "ppo.generation.batch_size=4",
        "ppo.learning_rate=0.001", "ppo.value_learning_rate=0.001", "ppo.checkpoint_every=0",
        *extra,
    ]


def capture_models(monkeypatch) -> dict:
    """Wrap ppo.build_models: keep the Models the trainer really uses and snapshots of their initial weights."""
    seen: dict = {}
    original = ppo.build_models

    def wrapper(cfg, device, *rest):
        models = original(cfg, device, *rest)
        seen["models"] = models
        seen["policy0"] = {k: v.detach().clone() for k, v in models.policy.named_parameters()}
        seen["reference0"] = {k: v.detach().clone() for k, v in models.reference.state_dict().items()}
        critic = models.value if models.value is not None else models.value_head  # separate, or the shared head
        seen["value0"] = {k: v.detach().clone() for k, v in critic.named_parameters()}
        return models

    monkeypatch.setattr(ppo, "build_models", wrapper)
    return seen


def assert_finite(row: dict, *keys: str) -> None:
    for k in keys:
        assert k in row, f"metric {k} missing from {sorted(row)}"
        assert row[k] is not None and math.isfinite(row[k]), f"metric {k} = {row[k]!r}"


def test_ppo_two_iterations_cli(tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = capture_models(monkeypatch)
    out = tmp_path / "run"
    # the separate critic with recomputed old log-probs: the defaults (shared, sampling) have their own tests below
    assert cli_main(["ppo", *ppo_overrides(out, tiny_model_dir, prompts_file, *SEPARATE)]) == 0
    models = seen["models"]

    # metrics: one row per iteration, finite losses
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert_finite(r, "policy_loss", "value_loss", "kl", "reward_mean", "entropy", "policy_grad_norm")
        assert r["valid_rows"] == 4  # missing_eos=penalty keeps every rollout
        assert 0.0 <= r["eos_rate"] <= 1.0
    # iteration 1 samples from the untouched policy == reference: zero KL, ratio 1 on the first minibatch
    assert abs(rows[0]["kl"]) < 1e-6
    assert abs(rows[0]["non_score_reward"]) < 1e-6
    assert rows[0]["ratio_max"] == pytest.approx(1.0, abs=1e-5)
    # iteration 2 samples from the updated policy: it has drifted from the reference
    assert abs(rows[1]["kl"]) > 1e-6

    # the reference object the trainer used was never updated, and shares no storage with the policy
    assert models.reference is not models.policy
    policy_ptrs = {p.data_ptr() for p in models.policy.parameters()}
    for name, p in models.reference.named_parameters():
        assert not p.requires_grad, name
        assert p.data_ptr() not in policy_ptrs, name
    ref_now = models.reference.state_dict()
    for k, v in seen["reference0"].items():
        assert torch.equal(ref_now[k], v), f"reference tensor {k} changed"

    # every trainable policy parameter moved; the saved policy is the trained one
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    saved = AutoModelForCausalLM.from_pretrained(out / "policy", dtype=torch.float32)
    init_params = dict(initial.named_parameters())
    saved_params = dict(saved.named_parameters())
    assert set(saved_params) == set(init_params)
    for name, p in saved_params.items():
        assert p.requires_grad
        assert not torch.equal(p, init_params[name]), f"policy parameter {name} did not change"
        torch.testing.assert_close(p, dict(models.policy.named_parameters())[name].detach(), rtol=0, atol=0)
    # the trainer's starting policy was the model on disk, and the reference still equals it
    for name, p in init_params.items():
        assert torch.equal(seen["policy0"][name], p.detach()), name
        assert torch.equal(ref_now[name], p.detach()), name
    # the critic trained too
    value_now = dict(models.value.named_parameters())
    moved = [k for k, v in seen["value0"].items() if not torch.equal(value_now[k], v)]
    assert "score.weight" in moved and len(moved) == len(value_now)

    # tokenizer saved beside the policy, loads and round-trips the chat format
    tok = AutoTokenizer.from_pretrained(out / "policy")
    assert tok.eos_token_id == models.tokenizer.eos_token_id
    assert tok.pad_token_id == models.tokenizer.pad_token_id != tok.eos_token_id
    assert tok.decode(tok("Why is the sky blue?")["input_ids"]) == "Why is the sky blue?"
    with torch.no_grad():
        logits = saved(input_ids=torch.tensor([tok("Hello")["input_ids"]])).logits
    assert torch.isfinite(logits).all()

    # the resolved config sits beside the outputs
    cfg = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["ppo"]["policy"] == tiny_model_dir
    assert cfg["ppo"]["learning_rate"] == pytest.approx(0.001)
    assert cfg["ppo"]["iterations"] == 2
    assert cfg["run"]["output_dir"] == str(out)


def test_ppo_kl_mode_loss(tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    seen = capture_models(monkeypatch)
    cfg = load_config(RootConfig, None, ppo_overrides(tmp_path, tiny_model_dir, prompts_file, "ppo.kl_mode=loss",
                                                      "ppo.kl_coef=0.5"))
    final = ppo.train(cfg.run, cfg.ppo)
    assert (final / "model.safetensors").is_file()
    rows = read_metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert_finite(r, "policy_loss", "value_loss", "kl", "reward_mean", "kl_loss")
        assert r["kl_loss"] >= -1e-6  # an exact KL is never negative
        # kl_mode=loss: the reward holds the score only, no per-token KL penalty
        assert r["non_score_reward"] == pytest.approx(0.0, abs=1e-7)
    assert rows[0]["kl_loss"] == pytest.approx(0.0, abs=1e-6)  # policy == reference before the first step
    assert rows[1]["kl_loss"] > 1e-7  # ... and not after it
    models = seen["models"]
    ref_now = models.reference.state_dict()
    assert all(torch.equal(ref_now[k], v) for k, v in seen["reference0"].items())
    pol_now = dict(models.policy.named_parameters())
    assert all(not torch.equal(pol_now[k], v) for k, v in seen["policy0"].items())


def test_ppo_adaptive_kl_and_drop_missing_eos(tmp_path, eos_model_dir, prompts_file):
    horizon, target, beta0, batch = 100, 1.0, 0.05, 4  # batch: rollouts per iteration
    cfg = load_config(RootConfig, None, ppo_overrides(
        tmp_path, eos_model_dir, prompts_file, "ppo.iterations=3", f"ppo.kl_target={target}",
        f"ppo.kl_horizon={horizon}", f"ppo.kl_coef={beta0}", "ppo.missing_eos=drop"))
    ppo.train(cfg.run, cfg.ppo)
    rows = read_metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    beta = beta0
    for r in rows:
        assert_finite(r, "eos_rate", "kl_coef", "reward_mean")
        # only rollouts that ended with EOS enter the losses
        assert r["valid_rows"] == round(r["eos_rate"] * batch)
        if r["valid_rows"]:
            assert_finite(r, "policy_loss", "value_loss", "score_mean", "kl")
        else:
            assert "policy_loss" not in r and r["score_mean"] is None and r["kl"] is None
        # Ziegler et al.'s controller: beta *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon
        assert r["kl_coef"] == pytest.approx(beta, rel=1e-6)
        # n = rollouts that entered the update; an iteration with none leaves beta alone
        if r["valid_rows"]:
            beta *= 1 + min(max(r["kl"] / target - 1, -0.2), 0.2) * r["valid_rows"] / horizon
    assert rows[1]["kl_coef"] != rows[0]["kl_coef"]
    # the test is only meaningful if some rollouts were dropped and some were kept
    rates = [r["eos_rate"] for r in rows]
    assert any(0 < x < 1 for x in rates), rates


def _no_eos_drop_run(out, tiny_model_dir, prompts_file, monkeypatch, *extra: str) -> tuple[dict, list[dict]]:
    seen = capture_models(monkeypatch)
    cfg = load_config(RootConfig, None, ppo_overrides(out, tiny_model_dir, prompts_file, "ppo.missing_eos=drop",
                                                      "ppo.generation.max_new_tokens=3", *extra))
    ppo.train(cfg.run, cfg.ppo)
    rows = read_metrics(out)
    # the random tiny model practically never samples EOS within 3 tokens (p ~ 1/49152 per token)
    assert all(r["eos_rate"] == 0.0 for r in rows), [r["eos_rate"] for r in rows]
    return seen, rows


def test_drop_without_any_eos_skips_every_update(tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    seen, rows = _no_eos_drop_run(tmp_path, tiny_model_dir, prompts_file, monkeypatch)
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert r["valid_rows"] == 0 and "policy_loss" not in r and "value_loss" not in r
        assert_finite(r, "reward_mean")
    # no update happened: the saved policy is the initial one
    from transformers import AutoModelForCausalLM

    saved = dict(AutoModelForCausalLM.from_pretrained(tmp_path / "policy").named_parameters())
    for name, p in seen["policy0"].items():
        assert torch.equal(saved[name], p), name


def test_adaptive_kl_is_not_updated_without_valid_rows(tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    _, rows = _no_eos_drop_run(tmp_path, tiny_model_dir, prompts_file, monkeypatch, "ppo.kl_target=1.0",
                               "ppo.kl_horizon=100")
    assert rows[1]["kl_coef"] == rows[0]["kl_coef"]


def test_prompt_mean_baseline_centres_each_prompts_scores(tmp_path, tiny_model_dir, prompts_file):
    """2 answers per prompt, scores minus their prompt's mean (ops.centre_within_groups, tested by hand in
    tests/ops): the logged score is the one before the baseline (here the raw reward, answer length: with
    missing_eos=keep nothing changes it), and the spread the policy sees is logged beside it."""
    out = tmp_path / "run"
    assert cli_main(["ppo", *ppo_overrides(out, tiny_model_dir, prompts_file, "ppo.samples_per_prompt=2",
                                           "ppo.score_baseline=prompt_mean", "ppo.missing_eos=keep")]) == 0
    rows = read_metrics(out)
    for row in rows:
        assert row["reward_mean"] > 0 and row["score_mean"] == pytest.approx(row["reward_mean"], rel=1e-6)
        assert row["score_centred_std"] >= 0
        assert_finite(row, "policy_loss", "value_loss", "kl")
    assert any(row["score_centred_std"] > 0 for row in rows)  # two answers to a prompt rarely have one length
    for bad, key in ((["ppo.samples_per_prompt=3"], "ppo.samples_per_prompt"),
                     (["ppo.score_baseline=prompt_mean"], "ppo.score_baseline")):
        with pytest.raises(Exception, match=key):
            load_config(RootConfig, None, bad)


def test_shared_critic_one_pass_gives_the_policys_logprobs_and_head_values(tiny_model_dir):
    """response_logprobs_and_values: the same log-probs as the policy's own pass, and values = the head on the
    backbone's final (normalised) hidden state at positions p-1 .. p+r-2, computed here by hand."""
    from rlaif.models.loading import load_causal_lm
    from rlaif.rollout.scoring import _joined, response_logprobs, response_logprobs_and_values

    model = load_causal_lm(tiny_model_dir, device="cpu").eval()
    torch.manual_seed(0)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    prompt_ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])  # left padding on row 0
    response_ids = torch.tensor([[12, 13, 14], [15, 16, 0]])
    response_mask = torch.tensor([[True, True, True], [True, True, False]])
    args = (prompt_ids, prompt_mask, response_ids, response_mask)
    with torch.no_grad():
        lp, _, _, values = response_logprobs_and_values(model, head, *args, 0.7)
        lp_ref = response_logprobs(model, *args, 0.7)[0]
        ids, attn, pos = _joined(*args)
        hidden = model.model(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state
        by_hand = head(hidden[:, 3:6]).squeeze(-1)  # p = 4, r = 3: positions 3, 4, 5 predict tokens 0, 1, 2
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(values, by_hand)
    assert values.shape == (2, 3)


def test_ppo_with_a_shared_critic(tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    """critic=shared: no second backbone is loaded, the value head and every policy weight train in one step,
    the value loss is logged, and a run resumed from its checkpoint ends with the same weights and head."""
    seen: dict = {}
    original = ppo.build_models

    def wrapper(cfg, device, *rest):
        seen["models"] = original(cfg, device, *rest)
        return seen["models"]

    monkeypatch.setattr(ppo, "build_models", wrapper)
    out = tmp_path / "shared"
    args = ppo_overrides(out, tiny_model_dir, prompts_file, "ppo.critic=shared", "ppo.iterations=3",
                         "ppo.checkpoint_every=1", "run.keep_checkpoints=3", "ppo.warmup_steps=3")
    assert cli_main(["ppo", *args]) == 0
    models = seen["models"]
    assert models.value is None and models.value_head is not None
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert_finite(r, "policy_loss", "value_loss", "vf_clipfrac", "kl", "policy_grad_norm", "value_mean")
    assert rows[0]["value_mean"] == 0.0  # the head starts at V = 0
    assert rows[1]["value_mean"] != 0.0  # and has learnt by the second rollout
    # one optimizer step per iteration, warmed up over 3: the resumed run below must count its step as the third
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])
    head_final = {k: v.clone() for k, v in models.value_head.state_dict().items()}
    policy_final = {k: v.detach().clone() for k, v in models.policy.named_parameters()}

    # the same command, resumed from iteration 2's checkpoint, ends where the uninterrupted run ended
    import shutil

    from rlaif.checkpoint import list_checkpoints

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "policy")
    for step, path in list_checkpoints(resumed):
        if step == 3:
            shutil.rmtree(path)
    calls = []
    sample = ppo.sample_responses
    monkeypatch.setattr(ppo, "sample_responses", lambda *a, **k: calls.append(1) or sample(*a, **k))
    assert cli_main(["ppo", *ppo_overrides(resumed, tiny_model_dir, prompts_file, "ppo.critic=shared",
                                           "ppo.iterations=3", "ppo.checkpoint_every=1",
                                           "run.keep_checkpoints=3", "ppo.warmup_steps=3")]) == 0
    assert len(calls) == 1  # only iteration 3 ran again
    models = seen["models"]
    for k, v in models.value_head.state_dict().items():
        torch.testing.assert_close(v, head_final[k], rtol=1e-5, atol=1e-6)
    for k, v in models.policy.named_parameters():
        torch.testing.assert_close(v.detach(), policy_final[k], rtol=1e-5, atol=1e-6)
    assert [r["iteration"] for r in read_metrics(resumed)] == [1, 2, 3]


def test_shared_critic_rejects_a_separate_critic_source(tmp_path, tiny_model_dir, prompts_file):
    assert cli_main(["ppo", *ppo_overrides(tmp_path, tiny_model_dir, prompts_file, "ppo.critic=shared",
                                           "ppo.value_init=reward")]) == 2


def test_autocast_for_picks_bf16_only_where_it_is_fast(monkeypatch, caplog):
    from rlaif import runtime

    cpu = torch.device("cpu")
    for precision in ("auto", "fp32"):
        with runtime.autocast_for(cpu, precision)():
            assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    with runtime.autocast_for(cpu, "bf16")():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)  # a CPU that would emulate bf16
    with caplog.at_level("WARNING", logger="rlaif"):
        ctx = runtime.autocast_for(cpu, "bf16")
    with ctx():
        assert not torch.is_autocast_enabled("cpu")
    assert "no native bf16" in caplog.text


@pytest.mark.skipif(not __import__("rlaif.runtime").runtime.cpu_has_native_bf16(),
                    reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_ppo_in_bf16_autocast_on_cpu(tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    """run.precision=bf16 on a CPU with native bf16: generation, scoring and the update run under bf16 autocast
    (their logits come out bf16), the master weights stay fp32, and every logged figure is finite."""
    from rlaif.rollout import scoring

    seen = capture_models(monkeypatch)
    dtypes: list[torch.dtype] = []
    original = scoring.policy_logits

    def recording(*a, **k):
        logits = original(*a, **k)
        dtypes.append(logits.dtype)
        return logits

    monkeypatch.setattr(scoring, "policy_logits", recording)
    out = tmp_path / "bf16"
    assert cli_main(["ppo", *ppo_overrides(out, tiny_model_dir, prompts_file, "run.precision=bf16")]) == 0
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert {p.dtype for p in seen["models"].policy.parameters()} == {torch.float32}
    assert any(not torch.equal(p.detach(), seen["policy0"][k]) for k, p in seen["models"].policy.named_parameters())
    for r in read_metrics(out):
        assert_finite(r, "policy_loss", "value_loss", "kl", "policy_grad_norm", "entropy")


@pytest.mark.parametrize("critic", ["separate", "shared"])
def test_ppo_with_old_logprobs_taken_while_sampling(critic, tmp_path, tiny_model_dir, prompts_file, monkeypatch):
    """ppo.old_logprobs=sampling: scoring runs no policy pass (only the reference's, and a separate critic's),
    and the update trains. One optimizer step per iteration (4 rollouts = 2 x 2, 1 epoch), so every ratio is
    taken before the step: in fp32 the sampled log-probs equal the update's own (approx_kl ~ 0, nothing
    clipped)."""
    seen: dict = {}
    original_build = ppo.build_models

    def build(cfg, device, *rest):
        seen["models"] = original_build(cfg, device, *rest)
        seen["policy0"] = [p.detach().clone() for p in seen["models"].policy.parameters()]
        return seen["models"]

    monkeypatch.setattr(ppo, "build_models", build)
    policy_passes: list[str] = []

    def counting(name: str):
        original = getattr(ppo_batch, name)

        def wrapped(model, *a, **k):
            if model is seen["models"].policy:
                policy_passes.append(name)
            return original(model, *a, **k)

        return wrapped

    for name in ("response_logprobs_and_values", "response_logprobs"):
        monkeypatch.setattr(ppo_batch, name, counting(name))
    out = tmp_path / "sampling"
    assert cli_main(["ppo", *ppo_overrides(out, tiny_model_dir, prompts_file, "ppo.old_logprobs=sampling",
                                           f"ppo.critic={critic}", "ppo.ppo_epochs=1")]) == 0
    assert policy_passes == []
    rows = read_metrics(out)
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert_finite(r, "policy_loss", "value_loss", "kl", "policy_grad_norm", "approx_kl", "clipfrac")
        assert abs(r["approx_kl"]) < 1e-5 and r["clipfrac"] == 0.0, r
    assert any(not torch.equal(p.detach(), p0) for p, p0 in zip(seen["models"].policy.parameters(), seen["policy0"]))


def test_first_minibatch_ratio_is_one_with_several_minibatches(tmp_path, tiny_model_dir, prompts_file):
    """Old log-probs recomputed in fp32: epoch 1's first minibatch sees ratio 1 (the policy has not stepped yet),
    while the later minibatches of the iteration (after steps) do not. `ratio_max` alone hides the first."""
    cfg = load_config(RootConfig, None, ppo_overrides(
        tmp_path, tiny_model_dir, prompts_file, "ppo.micro_batch_size=1", "ppo.gradient_accumulation_steps=2",
        "ppo.ppo_epochs=2", "ppo.iterations=1", "ppo.old_logprobs=recompute"))  # 4 rollouts, 2 per optimizer step: 2 minibatches x 2 epochs
    ppo.train(cfg.run, cfg.ppo)
    row = read_metrics(tmp_path)[0]
    assert row["ratio_dev_first_minibatch"] < 1e-5
    assert row["ratio_max"] > 1.0 + 1e-2  # measured 1.11: the steps moved the policy for the later minibatches


def test_warm_up_sets_each_groups_rate_from_the_run_wide_step():
    """ppo.warmup_steps: step k (0-based) of the run gets (k + 1) / W of each group's peak rate (the policy's,
    then a shared value head's), and the peak from step W - 1 on."""
    from rlaif.stages.ppo_updates import warm_up

    cfg = ppo.PPOConfig(learning_rate=1e-5, value_learning_rate=1e-4, warmup_steps=4)
    opt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                             {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1.0)
    assert warm_up(opt, cfg, 0) == 0.25
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2.5e-6, 2.5e-5])
    assert warm_up(opt, cfg, 2) == 0.75
    assert warm_up(opt, cfg, 3) == 1.0 and warm_up(opt, cfg, 40) == 1.0
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5, 1e-4])
    cfg.warmup_steps = 0  # the default: the peak from the first step
    assert warm_up(opt, cfg, 0) == 1.0
