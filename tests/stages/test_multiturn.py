"""Multi-turn conversations through label, rm, dpo, ppo and eval (tiny random Llama): the earlier turns reach the
judge, the reward model and the policy's prompt unchanged; SFT, DPO and the PPO rollout encode a conversation to
the same prompt ids; preference rows keep `messages`; histories are validated with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.jsonl import DataError
from rlaif.data.preferences import load_preferences
from rlaif.data.prompts import chat_prompt_ids, history_text, load_prompts
from rlaif.data.sft import SFTRow, encode_row, end_of_turn_ids
from rlaif.models.loading import load_tokenizer
from rlaif.rewards.sources import ModelReward
from rlaif.stages import label, ppo
from rlaif.stages.dpo_config import DPOConfig
from rlaif.stages.dpo_pairs import encode_pairs

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")
FIRST_TURNS = ("I'm planning a trip to Japan in spring.", "cherry blossoms usually peak")

RECORDING_JUDGE = '''
import json, os

def longer_recording(prompts, firsts, seconds):
    with open(os.environ["RLAIF_TEST_SEEN"], "a", encoding="utf-8") as f:
        f.write(json.dumps(list(prompts)) + "\\n")
    return [0.9 if len(a) > len(b) else 0.1 if len(a) < len(b) else 0.5 for a, b in zip(firsts, seconds)]
'''


def test_history_text_and_the_shipped_set():
    assert history_text((("user", "Hi?"),)) == "Hi?"  # one turn: unchanged from before
    rows = load_prompts("builtin:demo-multiturn")
    assert len(rows) == 12 and all(len(r.messages) >= 3 and r.reference for r in rows)
    assert rows[0].text == ("User: I'm planning a trip to Japan in spring.\n\nAssistant: Spring is a lovely time to "
                            "visit: the cherry blossoms usually peak from late March to early April.\n\nUser: Which "
                            "city should I visit first to see them?")
    assert rows[0].last_user == "Which city should I visit first to see them?"
    assert rows[2].text.startswith("System: You are a concise cooking assistant.")


@pytest.mark.parametrize("messages, message", [
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "must end with a user turn"),
    ([{"role": "user"}], "messages[0]: missing field 'content'"),
    ("hello", "field 'messages' must be a non-empty list"),
])
def test_bad_histories_name_file_line_and_field(tmp_path, messages, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "x", "messages": messages}) + "\n")
    for load in (load_prompts, load_preferences):
        with pytest.raises(DataError) as err:
            load(str(path))
        assert f"{path}:1" in str(err.value) and (message in str(err.value) or "chosen" in str(err.value))


def test_a_conversation_reaches_judge_rm_policy_and_encodes_alike(tmp_path, tiny_model_dir, monkeypatch):
    # label: the judge reads every turn; the rows keep the messages
    judge_py = tmp_path / "judge.py"
    judge_py.write_text(RECORDING_JUDGE)
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("RLAIF_TEST_SEEN", str(seen))
    out = tmp_path / "label"
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={out}", "run.progress=false", "run.threads=1", f"label.policy={tiny_model_dir}",
        "label.prompts=builtin:demo-multiturn", "label.max_prompts=3", "label.max_new_tokens=6",
        "label.judge.backend=function", f"label.judge.function={judge_py}:longer_recording"])
    label.train(cfg.run, cfg.label)
    judged = [q for line in seen.read_text().splitlines() for q in json.loads(line)]
    conv = load_prompts("builtin:demo-multiturn")[0]
    assert conv.text in judged and all(t in conv.text for t in FIRST_TURNS)
    rows = load_preferences(out / "preferences.jsonl")
    first = next(r for r in rows if r.id.startswith("mt-01:"))
    assert first.messages == conv.messages and first.prompt == conv.text
    # the reward model (decoder: chat template) sees the whole conversation before the answer
    rm = ModelReward(tiny_model_dir)
    enc = rm.encode([first.prompt], [first.chosen])
    decoded = rm.tokenizer.decode(enc["input_ids"][0][enc["attention_mask"][0].bool()])
    assert all(t in decoded for t in FIRST_TURNS) and decoded.rstrip().endswith("<|im_end|>")
    # the policy's prompt, SFT's and DPO's: the same ids for the same conversation, every turn in them
    tok = load_tokenizer(tiny_model_dir, padding_side="left")
    policy_ids = chat_prompt_ids(tok, conv)
    assert all(t in tok.decode(policy_ids) for t in FIRST_TURNS)
    sft = encode_row(tok, SFTRow("x", conv.messages, first.chosen), 1024, end_of_turn_ids(tok))
    dpo = encode_pairs(tok, [first], DPOConfig(max_length=1024))[0]
    assert list(sft.ids[:sft.prompt_len]) == list(policy_ids) == list(dpo.chosen.ids[:dpo.chosen.prompt_len]) \
        == list(dpo.rejected.ids[:dpo.rejected.prompt_len])


def test_ppo_rewards_the_last_turn_with_the_history_in_view(tmp_path, tiny_model_dir, monkeypatch):
    seen = tmp_path / "seen.jsonl"
    monkeypatch.setenv("RLAIF_TEST_SEEN", str(seen))
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={tmp_path / 'ppo'}", "run.progress=false", "run.threads=1", f"ppo.policy={tiny_model_dir}",
        "ppo.prompts=builtin:demo-multiturn", f"ppo.reward.function={REWARDS}:recording_length_reward",
        "ppo.iterations=1", "ppo.batch_size=4", "ppo.micro_batch_size=2", "ppo.gradient_accumulation_steps=2",
        "ppo.generation.max_new_tokens=6", "ppo.generation.batch_size=4", "ppo.checkpoint_every=0"])
    ppo.train(cfg.run, cfg.ppo)
    scored = [q for line in seen.read_text().splitlines() for q in json.loads(line)]
    texts = {r.text for r in load_prompts("builtin:demo-multiturn")}
    assert len(scored) == 4 and set(scored) <= texts and all(q.count("User: ") >= 2 for q in scored)
