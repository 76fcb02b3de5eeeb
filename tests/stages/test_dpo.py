"""DPO stage on a tiny random Llama with SmolLM2's tokenizer: smoke, the reference cache, soft labels through the
stage, accumulation, resume, bad input and config, CLI."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import interrupt_after_checkpoint
from rm_data import QA, toy_pairs, write_jsonl

from rlaif.cli import main as cli_main
from rlaif.config import ConfigError, load_config
from rlaif.configs import RootConfig
from rlaif.data.preferences import PreferenceRow
from rlaif.metrics import read_metrics
from rlaif.models.loading import load_causal_lm, load_tokenizer
from rlaif.stages import dpo

LOG2 = math.log(2)


@pytest.fixture()
def prefs_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(8, soft=True))


def dpo_args(out, model: str, data: str, *extra: str) -> list[str]:
    return [f"run.output_dir={out}", "run.progress=false", "run.seed=0", "run.threads=1", f"dpo.policy={model}",
            f"dpo.data={data}", "dpo.max_steps=3", "dpo.micro_batch_size=2", "dpo.gradient_accumulation_steps=2",
            "dpo.learning_rate=0.001", "dpo.eval_fraction=0", "dpo.checkpoint_every=0", *extra]


def _train(out: Path, model: str, data: str, *overrides: str) -> tuple[list[dict], dict, dict]:
    from safetensors.torch import load_file

    cfg = load_config(RootConfig, None, dpo_args(out, model, data, *overrides))
    final = dpo.train(cfg.run, cfg.dpo)
    summary = json.loads((out / "summary.json").read_text())
    return read_metrics(out), load_file(str(final / "model.safetensors")), summary


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def capture_model(monkeypatch) -> dict:
    seen: dict = {"loads": []}
    original = dpo.load_causal_lm

    def wrapper(arg, *a, **k):
        model = original(arg, *a, **k)
        seen["loads"].append(arg)
        if "model" not in seen:
            seen["model"] = model
            seen["initial"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    monkeypatch.setattr(dpo, "load_causal_lm", wrapper)
    return seen


# ---------------------------------------------------------------- smoke


def test_dpo_smoke_cli(tmp_path, tiny_model_dir, prefs_file, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = capture_model(monkeypatch)
    out = tmp_path / "run"
    assert cli_main(["dpo", *dpo_args(out, tiny_model_dir, prefs_file, "dpo.eval_fraction=0.25",
                                      "dpo.warmup_steps=1", "dpo.checkpoint_every=2")]) == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    # before any update the policy IS the reference: rewards exactly 0, loss log 2, no pair "won"
    assert rows[0]["eval_pairs"] == 2 and rows[0]["eval_loss"] == pytest.approx(LOG2, abs=1e-6)
    assert rows[0]["eval_rewards_chosen"] == rows[0]["eval_rewards_rejected"] == 0.0
    assert rows[0]["eval_accuracy"] == 0.0  # ties count as wrong
    # the first step starts there too (other batch shapes than the reference pass: float noise only)
    assert rows[1]["loss"] == pytest.approx(LOG2, abs=1e-4) and abs(rows[1]["reward_margin"]) < 1e-4
    for r in rows[1:]:
        for k in ("loss", "rewards_chosen", "rewards_rejected", "reward_margin", "accuracy", "logps_chosen",
                  "logps_rejected", "lr", "grad_norm"):
            assert r[k] is not None and math.isfinite(r[k]), (k, r)
        assert r["reward_margin"] == pytest.approx(r["rewards_chosen"] - r["rewards_rejected"], abs=1e-6)
        assert r["logps_chosen"] < 0 and r["logps_rejected"] < 0 and r["tokens"] > 0
        assert r["prompts_truncated"] == r["answers_truncated"] == 0
    assert [r["pairs"] for r in rows[1:]] == [4, 2, 4]  # 6 training pairs, 4 per step: 4, 2 | 4
    assert rows[1]["lr"] == pytest.approx(1e-3) and rows[3]["lr"] == pytest.approx(0.0)  # linear to 0
    for k in ("eval_loss", "eval_rewards_chosen", "eval_rewards_rejected", "eval_reward_margin", "eval_accuracy"):
        assert math.isfinite(rows[3][k])
    assert rows[3]["eval_loss"] != rows[0]["eval_loss"]

    # every trainable parameter moved; the reference was the starting policy itself (one model loaded)
    model = seen["model"]
    assert seen["loads"] == [tiny_model_dir]
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p.detach(), seen["initial"][name]), f"{name} did not change"
    # a plain Hugging Face causal LM with its tokenizer, holding the trained weights
    final = out / "policy"
    reloaded = AutoModelForCausalLM.from_pretrained(final)
    for name, p in reloaded.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[name].detach().cpu())
    assert AutoTokenizer.from_pretrained(final).chat_template
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_pairs"] == 6 and summary["eval_pairs"] == 2 and summary["beta"] == 0.1
    assert summary["reference_logps"]["cache"] == "computed" and (out / dpo.REFERENCE_CACHE).is_file()
    assert summary["eval"]["accuracy"] == rows[3]["eval_accuracy"]
    assert summary["eval_before"]["loss"] == rows[0]["eval_loss"]
    assert summary["last_step"]["loss"] == rows[3]["loss"]
    assert (out / "config.yaml").is_file()
    assert sorted(c.name for c in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]


# ---------------------------------------------------------------- the reference cache


def test_second_run_reuses_the_reference_cache(tmp_path, tiny_model_dir, prefs_file, monkeypatch):
    out = tmp_path / "run"
    args = ("dpo.eval_fraction=0.25", "dpo.max_steps=1", "run.resume=never")
    _train(out, tiny_model_dir, prefs_file, *args)
    cache = out / dpo.REFERENCE_CACHE
    cached = torch.load(cache, weights_only=False)
    assert cached["train_chosen"].shape == cached["train_rejected"].shape == (6,)
    assert cached["eval_chosen"].shape == (2,) and bool((cached["train_chosen"] < 0).all())
    # shift the cached held-out chosen log-probabilities by +2 (same key): a run that really reads the cache sees
    # chosen rewards beta * (logp - (ref + 2)) = 0.1 * -2 = -0.2 before any update, instead of 0
    cached["eval_chosen"] = cached["eval_chosen"] + 2.0
    torch.save(cached, cache)
    stamp = cache.stat().st_mtime_ns

    seen = capture_model(monkeypatch)
    rows, _, summary = _train(out, tiny_model_dir, prefs_file, *args)
    assert summary["reference_logps"]["cache"] == "reused" and cache.stat().st_mtime_ns == stamp
    assert rows[0]["eval_rewards_chosen"] == pytest.approx(-0.2, abs=1e-6)
    assert rows[0]["eval_rewards_rejected"] == pytest.approx(0.0, abs=1e-6)
    assert seen["loads"] == [tiny_model_dir]  # the policy only

    # another reference (or other data / max_length) does not match the key: recomputed with that model
    other = tmp_path / "other"
    _train(other, tiny_model_dir, prefs_file, "dpo.max_steps=1")
    seen["loads"].clear()
    rows, _, summary = _train(out, tiny_model_dir, prefs_file, *args, f"dpo.reference={other / 'policy'}")
    assert summary["reference_logps"]["cache"] == "computed" and summary["reference"] == str(other / "policy")
    assert seen["loads"] == [tiny_model_dir, str(other / "policy")]
    assert rows[0]["eval_rewards_chosen"] != 0.0  # the policy is no longer its own reference


def test_reference_retrained_in_place_is_scored_again(tmp_path, tiny_model_dir, prefs_file):
    """The cache is keyed on the reference's weights, not its name: new weights in the same folder must not
    reuse the old log-probabilities."""
    import shutil

    ref = tmp_path / "ref"
    shutil.copytree(tiny_model_dir, ref)
    out = tmp_path / "run"
    args = ("dpo.eval_fraction=0.25", "dpo.max_steps=1", "run.resume=never", f"dpo.reference={ref}")
    _, _, first = _train(out, tiny_model_dir, prefs_file, *args)
    _, _, again = _train(out, tiny_model_dir, prefs_file, *args)
    assert first["reference_logps"]["cache"] == "computed" and again["reference_logps"]["cache"] == "reused"
    trained = tmp_path / "trained"
    _train(trained, tiny_model_dir, prefs_file, "dpo.max_steps=1")
    shutil.copy(trained / "policy" / "model.safetensors", ref / "model.safetensors")  # retrained in place
    rows, _, after = _train(out, tiny_model_dir, prefs_file, *args)
    assert after["reference_logps"]["cache"] == "computed"
    assert rows[0]["eval_rewards_chosen"] != 0.0  # scored against the new weights, not the policy's copy


# ---------------------------------------------------------------- soft labels


def test_soft_labels_and_smoothing_through_the_stage(tiny_model_dir):
    """The stage's per-pair targets, fed to the real model: the reference is put at known distances."""
    rows = [PreferenceRow("a", QA[0][0], QA[0][1], QA[1][1], label_prob=0.9),
            PreferenceRow("b", QA[2][0], QA[2][1], "I don't know.", label_prob=0.6),
            PreferenceRow("c", QA[3][0], QA[3][1], QA[4][1])]
    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir)
    amp = contextlib.nullcontext

    def eval_loss(cfg: dpo.DPOConfig) -> dict:
        pairs = dpo.encode_pairs(tok, rows, cfg)
        chosen, rejected = dpo.score_all(model, pairs, 2, tok.pad_token_id, "cpu", amp)
        # reference: chosen 10 nats less likely than under the policy, rejected equal -> z = beta * 10 = 1
        return dpo.evaluate(model, pairs, (chosen - 10.0, rejected), cfg, tok.pad_token_id, "cpu", amp)

    # -logsigmoid(1) = 0.3132617 and -logsigmoid(-1) = 1.3132617 = 0.3132617 + 1, so with smoothing e the loss is
    # (1 - e) * 0.3132617 + e * 1.3132617 = 0.3132617 + e
    # soft labels: e = 1 - p = [0.1, 0.4, 0 (hard row)] -> [0.4132617, 0.7132617, 0.3132617], mean 0.4799284
    ev = eval_loss(dpo.DPOConfig(beta=0.1))
    assert ev["eval_loss"] == pytest.approx(0.4799284, abs=1e-5)
    assert ev["eval_rewards_chosen"] == pytest.approx(1.0, abs=1e-5) and ev["eval_accuracy"] == 1.0
    # hard labels: every row 0.3132617
    assert eval_loss(dpo.DPOConfig(beta=0.1, use_soft_labels=False))["eval_loss"] == pytest.approx(0.3132617,
                                                                                                    abs=1e-5)
    # both: target = p (1 - 0.1) + (1 - p) 0.1 -> p = 0.9: 0.82, p = 0.6: 0.58, hard: 0.9 ; e = [0.18, 0.42, 0.1]
    # mean loss 0.3132617 + (0.18 + 0.42 + 0.1) / 3 = 0.3132617 + 0.2333333 = 0.5465950
    both = eval_loss(dpo.DPOConfig(beta=0.1, label_smoothing=0.1))
    assert both["eval_loss"] == pytest.approx(0.5465950, abs=1e-5)
    assert [dpo.pair_smoothing(r, dpo.DPOConfig(label_smoothing=0.1)) for r in rows] == pytest.approx(
        [0.18, 0.42, 0.1])


# ---------------------------------------------------------------- invariants


def test_accumulation_1x4_equals_4x1(tmp_path, tiny_model_dir, prefs_file):
    """Answers of different lengths and soft labels: one normaliser (pairs per step)."""
    common = ("dpo.max_steps=2", "dpo.max_grad_norm=1000")
    rows_a, w_a, _ = _train(tmp_path / "a", tiny_model_dir, prefs_file, "dpo.micro_batch_size=1",
                            "dpo.gradient_accumulation_steps=4", *common)
    rows_b, w_b, _ = _train(tmp_path / "b", tiny_model_dir, prefs_file, "dpo.micro_batch_size=4",
                            "dpo.gradient_accumulation_steps=1", *common)
    assert [r["pairs"] for r in rows_a] == [r["pairs"] for r in rows_b] == [4, 4]
    for ra, rb in zip(rows_a, rows_b):
        for k in ("loss", "grad_norm", "reward_margin", "logps_chosen"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), k
    assert_same_weights(w_a, w_b)


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, prefs_file,
                                                                    monkeypatch):
    """4 steps over 2 epochs with warm-up, cosine and a held-out split; killed after the step-2 checkpoint. One
    resume reuses the cache; the other lost it and must rescore the STARTING policy, not the checkpoint."""
    args = ("dpo.max_steps=4", "dpo.warmup_steps=1", "dpo.lr_schedule=cosine", "dpo.min_lr_ratio=0.1",
            "dpo.eval_fraction=0.25", "dpo.eval_every=1", "dpo.checkpoint_every=1", "dpo.label_smoothing=0.05",
            "run.resume=auto")
    straight, w_straight, s_straight = _train(tmp_path / "whole", tiny_model_dir, prefs_file, *args)
    assert s_straight["reference_logps"]["cache"] == "computed"
    assert [r["step"] for r in straight] == [0, 1, 2, 3, 4]
    for keep_cache in (True, False):
        split = tmp_path / f"split-{keep_cache}"
        with monkeypatch.context() as mp:
            interrupt_after_checkpoint(mp, dpo, 2)
            with pytest.raises(KeyboardInterrupt):
                _train(split, tiny_model_dir, prefs_file, *args)
        assert [r["step"] for r in read_metrics(split)] == [0, 1, 2]
        assert not (split / "policy").exists() and not (split / "summary.json").exists()
        state = json.loads((split / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
        assert state == {"stage": "dpo", "step": 2, "epoch": 1, "offset": 0, "total_steps": 4}  # 6 pairs: 4 + 2
        if not keep_cache:
            (split / dpo.REFERENCE_CACHE).unlink()

        resumed, w_resumed, s_resumed = _train(split, tiny_model_dir, prefs_file, *args)
        assert s_resumed["reference_logps"]["cache"] == ("reused" if keep_cache else "computed")
        assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]
        for a, b in zip(resumed, straight):
            for k in ("loss", "lr", "grad_norm", "reward_margin", "eval_loss", "eval_reward_margin",
                      "eval_accuracy"):
                assert (a.get(k) is None) == (b.get(k) is None), k
                if a.get(k) is not None:
                    assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (keep_cache, a["step"], k)
        assert_same_weights(w_resumed, w_straight)
        assert s_resumed["eval"] == pytest.approx(s_straight["eval"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("extra, message, good_steps", [
    # step 1's weights are finite (~1e30); step 2's forward pass overflows
    (("dpo.learning_rate=1e30",), "step 2: non-finite gradient norm nan", [1]),
    # AdamW's decay factor overflows in the first update: finite loss and gradients, inf/NaN weights
    (("dpo.weight_decay=1e42",), "step 1: non-finite weights after the optimizer step", []),
    # finite weights (~1e10) after step 1 but the held-out pass overflows: stop before checkpoint 1
    (("dpo.learning_rate=1e10", "dpo.eval_fraction=0.25", "dpo.eval_every=1"), "step 1: held-out loss is nan", []),
])
def test_nonfinite_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, prefs_file,
                                                                            capsys, extra, message, good_steps):
    from rlaif.checkpoint import list_checkpoints

    out = tmp_path / "run"
    assert cli_main(["dpo", *dpo_args(out, tiny_model_dir, prefs_file, "dpo.checkpoint_every=1",
                                      "dpo.micro_batch_size=2", "dpo.gradient_accumulation_steps=1", *extra)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rlaif: error:")]
    assert len(lines) == 1 and message in lines[0], lines
    assert [s for s, _ in list_checkpoints(out)] == good_steps
    logged = read_metrics(out) if (out / "metrics.jsonl").exists() else []
    assert [r["step"] for r in logged if r["step"] > 0] == good_steps
    assert not (out / "policy").exists() and not (out / "summary.json").exists()


# ---------------------------------------------------------------- bad input, config, CLI


@pytest.mark.parametrize("where", ["data", "eval_data"])
def test_bad_row_through_the_cli_exits_2_names_file_and_line(tmp_path, tiny_model_dir, prefs_file, capsys, where):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "prompt": "Q?", "chosen": "A.", "rejected": "B."},
                                                {"id": "b", "prompt": "Q?", "chosen": "A.", "label_prob": 0.7}])
    out = tmp_path / "run"
    extra = ("dpo.eval_fraction=0", f"dpo.eval_data={bad}") if where == "eval_data" else ()
    assert cli_main(["dpo", *dpo_args(out, tiny_model_dir, bad if where == "data" else prefs_file, *extra)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{bad}:2:" in lines[0] and "'rejected'" in lines[0]
    assert not out.exists()  # nothing written, not even config.yaml


def test_cli_without_data_exits_2(tmp_path, capsys):
    assert cli_main(["dpo", f"run.output_dir={tmp_path / 'run'}"]) == 2
    assert "'dpo.data'" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [
    ("dpo.beta=0", "dpo.beta"),
    ("dpo.label_smoothing=0.5", "dpo.label_smoothing"),
    ("dpo.label_smoothing=-0.1", "dpo.label_smoothing"),
    ("dpo.max_length=1", "dpo.max_length"),
    ("dpo.micro_batch_size=0", "dpo.micro_batch_size"),
    ("dpo.lr_schedule=step", "dpo.lr_schedule"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(RootConfig, None, [override])


def test_help_lists_the_dpo_keys(capsys):
    assert cli_main(["dpo", "--help"]) == 0
    text = capsys.readouterr().out
    for key in ("dpo.beta", "dpo.label_smoothing", "dpo.use_soft_labels", "dpo.reference"):
        assert key in text


def test_demo_config_loads():
    cfg = load_config(RootConfig, Path(__file__).resolve().parents[2] / "configs" / "dpo-demo.yaml")
    assert cfg.dpo.policy == "smollm2-135m-instruct" and cfg.dpo.data.endswith("preferences.jsonl")
    assert cfg.dpo.beta == 0.1 and cfg.run.output_dir == "runs/demo-dpo"


def test_resume_refuses_another_stages_checkpoints(tmp_path, tiny_model_dir, prefs_file, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000001"
    (ckpt / "model").mkdir(parents=True)
    (ckpt / "model" / "config.json").write_text("{}")
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1, "epoch": 0, "offset": 4, "total_steps": 3}))
    (ckpt / "COMPLETE").write_text("ok\n")  # an SFT checkpoint: model/ but no "stage": "dpo"
    assert cli_main(["dpo", *dpo_args(tmp_path / "run", tiny_model_dir, prefs_file)]) == 2
    assert "is not a DPO checkpoint" in capsys.readouterr().err
