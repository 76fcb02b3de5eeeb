"""Reward sources: Python callables, encoder (pair) and decoder (chat) reward models, ensembles."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.metrics import read_metrics
from rlaif.rewards.sources import (
    CallableReward,
    EnsembleReward,
    ModelReward,
    load_callable,
    make_reward_source,
)
from rlaif.stages import ppo

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")

QUESTIONS = ["What is the capital of France?", "Hi?"]
ANSWERS = ["Paris is the capital of France.", "Hello there, friend"]


# ---------------------------------------------------------------- callables


def test_callable_module_function():
    src = CallableReward("rlaif.rewards.examples:about_20_words")
    assert src.name == "rlaif.rewards.examples:about_20_words"
    out = src(["q", "q"], ["one two three four five", " ".join(["w"] * 20)])
    assert out.dtype == torch.float32 and out.shape == (2,)
    assert out.tolist() == pytest.approx([1 - 15 / 20, 1.0])


def test_callable_file_function():
    src = CallableReward(f"{REWARDS}:length_reward")
    assert src(QUESTIONS, ["abcde", ""]).tolist() == pytest.approx([0.5, 0.0])
    assert CallableReward(f"{REWARDS}:question_length")(QUESTIONS, ANSWERS).tolist() == [30.0, 3.0]


@pytest.mark.parametrize("spec", [
    "no_colon_here",
    "rlaif_no_such_module_xyz:f",
    "rlaif.rewards.examples:no_such_function",
    "/definitely/not/here/rewards.py:f",
    f"{REWARDS}:no_such_function",
    f"{REWARDS}:REWARDS_NOT_A_FUNCTION",
])
def test_bad_spec_names_it(spec):
    with pytest.raises(ValueError) as e:
        load_callable(spec)
    assert spec in str(e.value)
    with pytest.raises(ValueError, match="reward function"):
        CallableReward(spec)


def test_callable_wrong_count_is_an_error(tmp_path):
    f = tmp_path / "short.py"
    f.write_text("def f(prompts, responses):\n    return [1.0]\n", encoding="utf-8")
    src = CallableReward(f"{f}:f")
    with pytest.raises(ValueError, match="returned 1 scores for 2 responses"):
        src(QUESTIONS, ANSWERS)


# ---------------------------------------------------------------- reward models


def test_encoder_rm_pair_format_sees_question_and_answer():
    torch.manual_seed(0)  # the scalar head on top of MiniLM is freshly initialised
    rm = ModelReward("minilm-l6", batch_size=2)
    assert rm.format == "pair"
    enc = rm.encode(QUESTIONS, ANSWERS)
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        ids = enc["input_ids"][i][enc["attention_mask"][i].bool()]
        types = enc["token_type_ids"][i][enc["attention_mask"][i].bool()]
        first = rm.tokenizer.decode(ids[types == 0], skip_special_tokens=True)
        second = rm.tokenizer.decode(ids[types == 1], skip_special_tokens=True)
        # segment A is the real question, segment B the answer (MiniLM is uncased)
        assert first == q.lower() and second == a.lower()
    scores = rm(QUESTIONS, ANSWERS)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # padding the shorter pair does not change its score, nor does the batch size
    rm1 = rm(QUESTIONS[1:], ANSWERS[1:])
    assert_close(scores[1:], rm1, atol=1e-5, rtol=0)
    rm.batch_size = 1
    assert_close(rm(QUESTIONS, ANSWERS), scores, atol=1e-5, rtol=0)
    # the question matters to the score (it is not an empty string)
    assert abs(rm(["Why is the sky blue?"], ANSWERS[:1]).item() - scores[0].item()) > 1e-6


def test_decoder_rm_chat_format_sees_question_and_answer(tiny_model_dir):
    torch.manual_seed(0)
    rm = ModelReward(tiny_model_dir, batch_size=4)
    assert rm.format == "chat"
    tok = rm.tokenizer
    assert tok.pad_token_id != tok.eos_token_id
    enc = rm.encode(QUESTIONS, ANSWERS)
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        text = tok.decode(enc["input_ids"][i][enc["attention_mask"][i].bool()])
        assert f"<|im_start|>user\n{q}<|im_end|>" in text
        assert f"<|im_start|>assistant\n{a}<|im_end|>" in text
    # right padding: the shorter row's pads come after its last real token
    m = enc["attention_mask"][1]
    assert m[0] == 1 and m[-1] == 0 and (enc["input_ids"][1][~m.bool()] == tok.pad_token_id).all()
    scores = rm(QUESTIONS, ANSWERS)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # each row is read at its last real token: the padded row scores as it does alone
    assert_close(rm(QUESTIONS[1:], ANSWERS[1:]), scores[1:], atol=1e-5, rtol=0)
    assert_close(rm(QUESTIONS[:1], ANSWERS[:1]), scores[:1], atol=1e-5, rtol=0)


def test_decoder_rm_truncates_from_the_left_keeping_the_answer(tiny_model_dir):
    rm = ModelReward(tiny_model_dir, max_length=24)
    long_q = "Tell me everything about " + "the history of bread, " * 20 + "please."
    enc = rm.encode([long_q], ["Bread is old."])
    assert enc["input_ids"].shape[1] == 24
    assert rm.tokenizer.decode(enc["input_ids"][0]).endswith("Bread is old.<|im_end|>\n")


def test_reward_bias_is_subtracted(tiny_model_dir, tmp_path):
    import shutil

    from transformers import AutoConfig

    folder = tmp_path / "rm"
    shutil.copytree(tiny_model_dir, folder)
    cfg = AutoConfig.from_pretrained(folder)
    cfg.rlaif_reward_bias = 2.5
    cfg.save_pretrained(folder)
    torch.manual_seed(0)
    plain = ModelReward(tiny_model_dir)(QUESTIONS, ANSWERS)
    torch.manual_seed(0)
    biased = ModelReward(str(folder))(QUESTIONS, ANSWERS)
    assert_close(biased, plain - 2.5)


# ---------------------------------------------------------------- ensembles


def _ensemble(combine: str, k: float = 1.0) -> EnsembleReward:
    return EnsembleReward([CallableReward(f"{REWARDS}:index_reward"), CallableReward(f"{REWARDS}:constant_one")],
                          combine=combine, k=k)


def test_ensemble_mean_min_mean_minus_std():
    q, a = ["q"] * 4, ["a"] * 4
    # sources: [0, 1, 2, 3] and [1, 1, 1, 1]; unbiased std of two values x, y is |x - y| / sqrt(2)
    s2 = math.sqrt(2.0)
    std = [1 / s2, 0.0, 1 / s2, 2 / s2]
    e = _ensemble("mean")
    assert e(q, a).tolist() == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert e.last_std.tolist() == pytest.approx(std)
    assert _ensemble("min")(q, a).tolist() == pytest.approx([0.0, 1.0, 1.0, 1.0])
    assert _ensemble("mean_minus_std")(q, a).tolist() == pytest.approx([0.5 - std[0], 1.0, 1.5 - std[2], 2.0 - std[3]])
    e2 = _ensemble("mean_minus_std", k=2.0)
    assert e2(q, a).tolist() == pytest.approx([0.5 - 2 * std[0], 1.0, 1.5 - 2 * std[2], 2.0 - 2 * std[3]])
    assert e2.last_std.tolist() == pytest.approx(std)
    assert "index_reward" in e2.name and "constant_one" in e2.name
    with pytest.raises(ValueError, match="median"):
        _ensemble("median")


def test_make_reward_source_single_and_ensemble(tiny_model_dir):
    single = make_reward_source([], f"{REWARDS}:constant_one", device="cpu", batch_size=4, max_length=64,
                                input_format="auto", combine="mean", std_k=1.0)
    assert isinstance(single, CallableReward)
    both = make_reward_source([tiny_model_dir], f"{REWARDS}:question_length", device="cpu", batch_size=4,
                              max_length=64, input_format="auto", combine="min", std_k=1.0)
    assert isinstance(both, EnsembleReward) and isinstance(both.sources[0], ModelReward)
    rm_scores = both.sources[0](QUESTIONS, ANSWERS)
    assert_close(both(QUESTIONS, ANSWERS), torch.minimum(rm_scores, torch.tensor([30.0, 3.0])))
    with pytest.raises(ValueError, match="no reward source"):
        make_reward_source([], None, device="cpu", batch_size=4, max_length=64, input_format="auto",
                           combine="mean", std_k=1.0)


# ---------------------------------------------------------------- end to end


def test_ppo_reward_sees_the_real_questions(tmp_path, tiny_model_dir, prompts_file):
    """question_length scores each rollout by the length of the question it was given: the mean over one
    pass through all 8 prompts must equal the mean length of the 8 questions (an empty question gives 0)."""
    questions = [json.loads(line)["prompt"] for line in Path(prompts_file).read_text().splitlines()]
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={tmp_path}", "run.progress=false", f"ppo.policy={tiny_model_dir}",
        f"ppo.prompts={prompts_file}", f"ppo.reward.function={REWARDS}:question_length", "ppo.iterations=1",
        "ppo.batch_size=8", "ppo.micro_batch_size=4", "ppo.gradient_accumulation_steps=2",
        "ppo.forward_batch_size=8", "ppo.generation.max_new_tokens=4", "ppo.checkpoint_every=0",
    ])
    ppo.train(cfg.run, cfg.ppo)
    (row,) = read_metrics(tmp_path)
    assert row["reward_mean"] == pytest.approx(sum(map(len, questions)) / len(questions), rel=1e-6)


def test_encoder_rm_caps_inputs_at_its_position_table():
    """ppo.reward.max_length defaults to 1024; MiniLM has 512 positions: a long pair is cut, not a crash."""
    rm = ModelReward("minilm-l6", max_length=1024)
    assert rm.max_length == 512
    scores = rm(["word " * 700], ["answer " * 700])
    assert scores.shape == (1,) and torch.isfinite(scores).all()
