"""Reward-model stage on tiny random models: smoke, loss terms, accumulation, resume, bad input, CLI, and the
trained RM inside PPO (reward, critic initialisation, ensemble)."""

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
from rlaif.data.jsonl import DataError
from rlaif.data.preferences import PreferenceRow, load_preferences
from rlaif.metrics import read_metrics
from rlaif.rewards.sources import ModelReward
from rlaif.stages import ppo, rm


@pytest.fixture()
def prefs_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(8, soft=True, margins=True))


def rm_args(out, model: str, data: str, *extra: str) -> list[str]:
    return [f"run.output_dir={out}", "run.progress=false", "run.seed=0", f"rm.model={model}", f"rm.data={data}",
            "rm.max_steps=3", "rm.micro_batch_size=2", "rm.gradient_accumulation_steps=2",
            "rm.learning_rate=0.001", "rm.eval_fraction=0", "rm.checkpoint_every=0", *extra]


def _train(out: Path, model: str, data: str, *overrides: str) -> tuple[list[dict], dict, dict]:
    from safetensors.torch import load_file

    cfg = load_config(RootConfig, None, rm_args(out, model, data, *overrides))
    final = rm.train(cfg.run, cfg.rm)
    summary = json.loads((out / "summary.json").read_text())
    return read_metrics(out), load_file(str(final / "model.safetensors")), summary


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def capture_model(monkeypatch) -> dict:
    seen: dict = {}
    original = rm.load_sequence_classifier

    def wrapper(*a, **k):
        model = original(*a, **k)
        seen["model"] = model
        seen["initial"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return model

    monkeypatch.setattr(rm, "load_sequence_classifier", wrapper)
    return seen


def build_tiny_bert(out_dir: Path) -> str:
    """A 2-layer, 16-wide random BERT sequence classifier with MiniLM's tokenizer (an encoder RM in seconds)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rlaif.models.loading import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=512, num_labels=1, pad_token_id=tok.pad_token_id,
                     initializer_range=0.5)
    BertForSequenceClassification(cfg).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


# ---------------------------------------------------------------- smoke


def test_rm_smoke_cli_decoder(tmp_path, tiny_model_dir, prefs_file, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    seen = capture_model(monkeypatch)
    out = tmp_path / "run"
    assert cli_main(["rm", *rm_args(out, tiny_model_dir, prefs_file, "rm.eval_fraction=0.25", "rm.warmup_steps=1",
                                    "rm.center_coef=0.01", "rm.checkpoint_every=2")]) == 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["eval_pairs"] == 2 and 0.0 <= rows[0]["eval_accuracy"] <= 1.0  # held-out before training
    for r in rows[1:]:
        for k in ("loss", "bt_loss", "center_penalty", "accuracy", "margin_mean", "reward_mean", "reward_std",
                  "lr", "grad_norm"):
            assert r[k] is not None and math.isfinite(r[k]), (k, r)
        # total = Bradley-Terry + 0.01 * centering, both reported
        assert r["loss"] == pytest.approx(r["bt_loss"] + 0.01 * r["center_penalty"], rel=1e-5)
        assert r["inputs_at_max_length"] == 0
    assert [r["pairs"] for r in rows[1:]] == [4, 2, 4]  # 6 training pairs, 4 per step: 4, 2 | 4
    assert rows[1]["lr"] == pytest.approx(1e-3) and rows[3]["lr"] == pytest.approx(1e-4)  # linear to 10 %
    for k in ("eval_loss", "eval_accuracy", "eval_margin_mean", "eval_reward_mean", "eval_reward_std"):
        assert math.isfinite(rows[3][k])

    # every trainable parameter moved
    model = seen["model"]
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p.detach(), seen["initial"][name]), f"{name} did not change"

    # a plain Hugging Face sequence classifier with its tokenizer and the bias
    final = out / "model"
    reloaded = AutoModelForSequenceClassification.from_pretrained(final)
    assert reloaded.config.num_labels == 1 and reloaded.config.architectures == ["LlamaForSequenceClassification"]
    for name, p in reloaded.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[name].detach().cpu())
    assert AutoTokenizer.from_pretrained(final).chat_template
    summary = json.loads((out / "summary.json").read_text())
    bias = reloaded.config.rlaif_reward_bias
    assert summary["rlaif_reward_bias"] == pytest.approx(bias) and summary["input_format"] == "chat"
    assert summary["train_pairs"] == 6 and summary["eval"]["pairs"] == 2
    assert summary["eval"]["accuracy"] == rows[3]["eval_accuracy"]
    assert summary["eval"]["reward_mean"] == pytest.approx(rows[3]["eval_reward_mean"] - bias)  # as PPO sees it
    assert (out / "config.yaml").is_file()
    assert sorted(c.name for c in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000003"]

    # PPO's ModelReward reads it with the same inputs: training chosen answers average 0 after the bias
    cfg = load_config(RootConfig, None, rm_args(out, tiny_model_dir, prefs_file, "rm.eval_fraction=0.25"))
    train_rows = rm.read_data(cfg.rm, cfg.run.seed).train
    scorer = ModelReward(str(final), batch_size=3)
    assert scorer.format == "chat" and scorer.bias == pytest.approx(bias)
    scores = scorer([r.prompt for r in train_rows], [r.chosen for r in train_rows])
    assert abs(scores.mean().item()) < 1e-5
    raw, _ = rm.rewards_of(reloaded.eval(), scorer.tokenizer, "chat", [r.prompt for r in train_rows],
                           [r.chosen for r in train_rows], 512, "cpu", contextlib.nullcontext)
    torch.testing.assert_close(scores, raw.detach() - bias, atol=1e-5, rtol=0)


def test_rm_encoder_pair_format(tmp_path, prefs_file):
    """An encoder backbone trains on (question, answer) text pairs and PPO's ModelReward reads it the same way."""
    bert = build_tiny_bert(tmp_path / "bert")
    rows, _, summary = _train(tmp_path / "run", bert, prefs_file, "rm.max_steps=2", "rm.disable_dropout=false")
    assert summary["input_format"] == "pair" and all(math.isfinite(r["loss"]) for r in rows)
    scorer = ModelReward(str(tmp_path / "run" / "model"))
    assert scorer.format == "pair" and scorer.bias == pytest.approx(summary["rlaif_reward_bias"])
    train = load_preferences(prefs_file)
    assert abs(scorer([r.prompt for r in train], [r.chosen for r in train]).mean().item()) < 1e-5


def test_pair_loss_uses_labels_margins_and_centering():
    rows = [PreferenceRow("a", "q", "c", "r", label_prob=0.7, margin=0.5), PreferenceRow("b", "q", "c", "r")]
    chosen, rejected = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    cfg = rm.RMConfig(margin=-0.5, center_coef=0.1)
    total, bt, center = rm.pair_loss(chosen, rejected, rows, cfg)
    # row a: its own margin 0.5 scaled by 2p - 1 = 0.4 (p = 0.7): d = 1.0 - 0.0 - 0.2 = 0.8
    #   -> 0.7 * log(1 + e^-0.8) + 0.3 * log(1 + e^0.8) = 0.7 * 0.3711007 + 0.3 * 1.1711007 = 0.6111007
    # row b: the config margin -0.5, hard label: d = 0.5 - 1.0 + 0.5 = 0 -> log 2 = 0.6931472 ; mean 0.6521239
    assert bt.item() == pytest.approx(0.6521239, rel=1e-6)
    # centering: (1.0 + 0.0)^2 = 1, (0.5 + 1.0)^2 = 2.25 ; mean 1.625 ; total = 0.6521239 + 0.1 * 1.625
    assert center.item() == pytest.approx(1.625) and total.item() == pytest.approx(0.6521239 + 0.1625, rel=1e-6)
    # use_label_prob=false: row a becomes a hard label -> log(1 + e^-0.5) = 0.4740770 ; mean 0.5836121
    hard = rm.pair_loss(chosen, rejected, rows, rm.RMConfig(margin=-0.5, use_label_prob=False))[1]
    assert hard.item() == pytest.approx((0.4740770 + math.log(2)) / 2, rel=1e-6)


# ---------------------------------------------------------------- invariants


def test_accumulation_1x4_equals_4x1(tmp_path, tiny_model_dir, prefs_file):
    """Pairs of different lengths, soft labels, margins and centering: one normaliser (pairs per step)."""
    common = ("rm.max_steps=2", "rm.max_grad_norm=1000", "rm.center_coef=0.05")
    rows_a, w_a, s_a = _train(tmp_path / "a", tiny_model_dir, prefs_file, "rm.micro_batch_size=1",
                              "rm.gradient_accumulation_steps=4", *common)
    rows_b, w_b, s_b = _train(tmp_path / "b", tiny_model_dir, prefs_file, "rm.micro_batch_size=4",
                              "rm.gradient_accumulation_steps=1", *common)
    assert [r["pairs"] for r in rows_a] == [r["pairs"] for r in rows_b] == [4, 4]
    for ra, rb in zip(rows_a, rows_b):
        for k in ("loss", "bt_loss", "center_penalty", "grad_norm", "accuracy", "margin_mean"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-7), k
    assert_same_weights(w_a, w_b)
    assert s_a["rlaif_reward_bias"] == pytest.approx(s_b["rlaif_reward_bias"], rel=1e-4, abs=1e-6)


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, prefs_file,
                                                                    monkeypatch):
    """4 steps over 2 epochs with warm-up, cosine and a held-out split; killed after the step-2 checkpoint."""
    args = ("rm.max_steps=4", "rm.warmup_steps=1", "rm.lr_schedule=cosine", "rm.eval_fraction=0.25",
            "rm.eval_every=1", "rm.checkpoint_every=1", "rm.center_coef=0.01", "run.resume=auto")
    with monkeypatch.context() as mp:
        interrupt_after_checkpoint(mp, rm, 2)
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path / "split", tiny_model_dir, prefs_file, *args)
    assert [r["step"] for r in read_metrics(tmp_path / "split")] == [0, 1, 2]
    assert not (tmp_path / "split" / "model").exists() and not (tmp_path / "split" / "summary.json").exists()
    state = json.loads((tmp_path / "split" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state == {"stage": "rm", "step": 2, "epoch": 1, "offset": 0, "total_steps": 4}  # 6 pairs: 4 + 2

    resumed, w_resumed, s_resumed = _train(tmp_path / "split", tiny_model_dir, prefs_file, *args)
    straight, w_straight, s_straight = _train(tmp_path / "whole", tiny_model_dir, prefs_file, *args)
    assert [r["step"] for r in resumed] == [r["step"] for r in straight] == [0, 1, 2, 3, 4]
    for a, b in zip(resumed, straight):
        for k in ("loss", "lr", "grad_norm", "eval_loss", "eval_accuracy", "eval_reward_std"):
            assert (a.get(k) is None) == (b.get(k) is None), k
            if a.get(k) is not None:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)
    assert_same_weights(w_resumed, w_straight)
    assert s_resumed["rlaif_reward_bias"] == pytest.approx(s_straight["rlaif_reward_bias"], rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------- bad input


def _row(i: int, **changes) -> dict:
    q, a = QA[i]
    row = {"id": f"r{i}", "prompt": q, "chosen": a, "rejected": "I don't know."}
    row.update(changes)
    return {k: v for k, v in row.items() if v is not ...}


BAD_ROWS = [
    ([_row(0), _row(1, rejected=...)], ":2: missing field 'rejected'"),
    ([_row(0, chosen="   ")], ":1: field 'chosen' is empty"),
    ([_row(0, prompt="")], ":1: field 'prompt' is empty"),
    ([_row(0, rejected=7)], ":1: field 'rejected' must be a string"),
    ([_row(0), '{"id": "x", "prompt": "Q?", "chosen": "A"'], ":2: malformed JSON"),
    ([_row(0, label_prob=1.5)], ":1: field 'label_prob' must be in [0, 1], got 1.5"),
    ([_row(0, label_prob=-0.1)], ":1: field 'label_prob' must be in [0, 1]"),
    ([_row(0, label_prob="0.9")], ":1: field 'label_prob' must be a number, got str"),
    ([_row(0, label_prob=True)], ":1: field 'label_prob' must be a number, got bool"),
    ([_row(0, margin=[1])], ":1: field 'margin' must be a number, got list"),
    ([_row(0), _row(1), _row(2, id="r0")], ":3: field 'id' duplicates 'r0' from "),
    ([_row(0, prompt=..., id="x")], ":1: missing field 'prompt' (or 'messages')"),
    (["[1, 2]"], ":1: expected a JSON object"),
    ([], "no preference rows (the file is empty)"),
]


@pytest.mark.parametrize("lines, message", BAD_ROWS)
def test_bad_rows_name_file_line_and_field(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_non_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(_row(0)).encode() + b'\n{"prompt": "caf\xe9", "chosen": "A", "rejected": "B"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not valid UTF-8"):
        load_preferences(str(path))


def test_messages_rows_keep_the_conversation(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
         "chosen": "4", "rejected": "5", "label_prob": 1, "margin": 0},
        {"messages": [{"role": "user", "content": "3+3?"}], "chosen": "6", "rejected": "7"},
    ])
    row, single = load_preferences(path)
    # the reward model reads the whole conversation as a transcript; DPO encodes the turns themselves
    assert (row.id, row.prompt, row.label_prob, row.margin) == ("line-1", "System: Be brief.\n\nUser: 2+2?", 1.0, 0.0)
    assert row.turns == (("system", "Be brief."), ("user", "2+2?"))
    assert (single.prompt, single.messages, single.turns) == ("3+3?", None, (("user", "3+3?"),))  # a prompt row


@pytest.mark.parametrize("where", ["data", "eval_data"])
def test_bad_input_through_the_cli_exits_2_and_writes_nothing(tmp_path, tiny_model_dir, capsys, where):
    good = write_jsonl(tmp_path / "good.jsonl", [_row(0), _row(1)])
    bad = write_jsonl(tmp_path / "bad.jsonl", [_row(2), _row(3, label_prob=2)])
    data, extra = (bad, []) if where == "data" else (good, [f"rm.eval_data={bad}"])
    out = tmp_path / "run"
    assert cli_main(["rm", *rm_args(out, tiny_model_dir, data, *extra)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{bad}:2:" in lines[0] and "'label_prob'" in lines[0]
    assert not out.exists()  # not even config.yaml: the input is checked before anything is written
    cfg = load_config(RootConfig, None, rm_args(out, tiny_model_dir, data, *extra))
    with pytest.raises(DataError):  # the Python API checks before it creates the folder, too
        rm.train(cfg.run, cfg.rm)
    assert not out.exists()


# ---------------------------------------------------------------- config / CLI


def test_cli_bad_key_exits_2(capsys):
    assert cli_main(["rm", "rm.learning_rat=1e-5"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'rm.learning_rat'" in lines[0]


def test_cli_without_data_exits_2(tmp_path, capsys):
    assert cli_main(["rm", f"run.output_dir={tmp_path / 'run'}"]) == 2
    assert "'rm.data'" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [
    ("rm.min_lr_ratio=2", "rm.min_lr_ratio"),
    ("rm.micro_batch_size=0", "rm.micro_batch_size"),
    ("rm.eval_fraction=1.0", "rm.eval_fraction"),
    ("rm.lr_schedule=step", "rm.lr_schedule"),
    ("rm.center_coef=-1", "rm.center_coef"),
    ("rm.use_label_prob=maybe", "rm.use_label_prob"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(RootConfig, None, [override])


def test_help_lists_the_rm_keys(capsys):
    assert cli_main(["rm", "--help"]) == 0
    text = capsys.readouterr().out
    assert "rm.use_label_prob" in text and "rm.center_coef" in text


def test_demo_config_loads():
    cfg = load_config(RootConfig, Path(__file__).resolve().parents[2] / "configs" / "rm-demo.yaml")
    assert cfg.rm.model == "minilm-l6" and cfg.rm.data


def test_resume_refuses_another_stages_checkpoints(tmp_path, tiny_model_dir, prefs_file, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000001"
    (ckpt / "model").mkdir(parents=True)
    (ckpt / "model" / "config.json").write_text("{}")
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 1, "epoch": 0, "offset": 4}))  # an SFT one
    (ckpt / "COMPLETE").write_text("ok\n")
    assert cli_main(["rm", *rm_args(tmp_path / "run", tiny_model_dir, prefs_file)]) == 2
    assert "is not a reward-model checkpoint" in capsys.readouterr().err


# ---------------------------------------------------------------- the trained RM inside PPO


@pytest.fixture(scope="module")
def tiny_rms(tmp_path_factory, tiny_model_dir) -> list[str]:
    """Two tiny decoder RMs trained on the same pairs from different seeds (an ensemble that disagrees)."""
    folder = tmp_path_factory.mktemp("tiny-rms")
    data = write_jsonl(folder / "prefs.jsonl", toy_pairs(8))
    out = []
    for seed in (0, 1):
        cfg = load_config(RootConfig, None, rm_args(folder / f"rm{seed}", tiny_model_dir, data, f"run.seed={seed}"))
        out.append(str(rm.train(cfg.run, cfg.rm)))
    return out


def ppo_args(out, policy: str, prompts: str, *extra: str) -> list[str]:
    return ["ppo", f"run.output_dir={out}", "run.progress=false", "run.seed=0", f"ppo.policy={policy}",
            f"ppo.prompts={prompts}", "ppo.iterations=1", "ppo.batch_size=4", "ppo.micro_batch_size=2",
            "ppo.gradient_accumulation_steps=2", "ppo.forward_batch_size=4", "ppo.generation.max_new_tokens=6",
            "ppo.learning_rate=0.001", "ppo.value_learning_rate=0.001", "ppo.checkpoint_every=0", *extra]


def test_ppo_takes_the_rm_as_reward_and_critic(tmp_path, tiny_model_dir, tiny_rms, prompts_file, monkeypatch):
    from safetensors.torch import load_file

    from rlaif.rollout.scoring import value_head

    seen: dict = {}
    original = ppo.build_models

    def wrapper(cfg, device, *rest):
        models = original(cfg, device, *rest)
        seen["score0"] = value_head(models.value).weight.detach().clone()
        return models

    monkeypatch.setattr(ppo, "build_models", wrapper)
    out = tmp_path / "ppo"
    assert cli_main(ppo_args(out, tiny_model_dir, prompts_file, f"ppo.reward.model=[{tiny_rms[0]}]",
                             "ppo.critic=separate", "ppo.value_init=reward")) == 0
    (row,) = read_metrics(out)
    for k in ("reward_mean", "reward_std", "value_mean", "value_loss", "policy_loss"):
        assert row[k] is not None and math.isfinite(row[k]), k
    assert "ensemble_std" not in row
    # the critic starts from the RM's trained head (not a fresh or zeroed one)
    trained_head = load_file(str(Path(tiny_rms[0]) / "model.safetensors"))["score.weight"]
    torch.testing.assert_close(seen["score0"], trained_head)
    assert seen["score0"].abs().sum() > 0


def test_ppo_with_an_ensemble_of_two_trained_rms_logs_ensemble_std(tmp_path, tiny_model_dir, tiny_rms,
                                                                    prompts_file):
    out = tmp_path / "ppo"
    assert cli_main(ppo_args(out, tiny_model_dir, prompts_file, f"ppo.reward.model=[{tiny_rms[0]}, {tiny_rms[1]}]",
                             "ppo.reward.combine=mean_minus_std")) == 0
    (row,) = read_metrics(out)
    assert row["ensemble_std"] is not None and math.isfinite(row["ensemble_std"]) and row["ensemble_std"] > 0
    assert math.isfinite(row["reward_mean"])


def test_ppo_refuses_an_encoder_rm_as_critic(tmp_path, tiny_model_dir, prefs_file, prompts_file, capsys):
    bert = build_tiny_bert(tmp_path / "bert")
    _train(tmp_path / "rm", bert, prefs_file, "rm.max_steps=1")
    rc = cli_main(ppo_args(tmp_path / "ppo", tiny_model_dir, prompts_file,
                           f"ppo.reward.model=[{tmp_path / 'rm' / 'model'}]", "ppo.value_init=reward"))
    assert rc == 2 and "ppo.value_init" in capsys.readouterr().err


def test_hard_labels_leave_ties_out_and_count_them(tmp_path, tiny_model_dir):
    """With soft labels off, a label_prob = 0.5 row (an undecided judge, an API verdict that failed to parse)
    has no winner: it is dropped and counted, not trained as "chosen wins" (p = 1). rm and dpo alike."""
    from rlaif.stages import dpo

    rows = [{"id": f"t{i}", "prompt": "q?", "chosen": f"a{i}", "rejected": f"b{i}", "label_prob": p}
            for i, p in enumerate([0.5, 0.9, 0.5, 1.0, 0.7, 0.5])]
    data = write_jsonl(tmp_path / "ties.jsonl", rows)
    for stage, flag in (("rm", "use_label_prob"), ("dpo", "use_soft_labels")):
        hard = load_config(RootConfig, None, [f"{stage}.data={data}", f"{stage}.eval_fraction=0",
                                              f"{stage}.{flag}=false"])
        module = rm if stage == "rm" else dpo
        got = module.read_data(getattr(hard, stage), 0)
        assert [r.id for r in got.train] == ["t1", "t3", "t4"] and got.ties_dropped == 3
        soft = load_config(RootConfig, None, [f"{stage}.data={data}", f"{stage}.eval_fraction=0"])
        got = module.read_data(getattr(soft, stage), 0)  # soft labels: a tie trains towards equal rewards
        assert len(got.train) == 6 and got.ties_dropped == 0
    _, _, summary = _train(tmp_path / "run", tiny_model_dir, data, "rm.use_label_prob=false")
    assert summary["train_pairs"] == 3 and summary["ties_dropped"] == 3
