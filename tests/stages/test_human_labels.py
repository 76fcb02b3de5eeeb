"""Hybrid labels (`rm.human_labels`, `dpo.human_labels`): human verdicts override AI labels of the same pair,
human-only pairs join the training rows, the summary counts each; bad rows name file, line and field."""

from __future__ import annotations

import json

import pytest
from rm_data import toy_pairs, write_jsonl

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.human_labels import apply_human_labels, load_human_labels
from rlaif.data.jsonl import DataError
from rlaif.data.preference_split import read_preference_split
from rlaif.data.preferences import load_preferences
from rlaif.stages import rm

HUMAN = [
    {"id": "pair-0", "verdict": "rejected"},  # first a mistake ...
    {"id": "pair-1", "verdict": "rejected"},  # overturned: chosen and rejected swap, hard label
    {"id": "pair-2", "verdict": "tie"},
    {"id": "pair-3", "verdict": "skip"},
    {"id": "pair-0", "verdict": "chosen"},  # ... then revised: the last verdict counts (agreed)
    {"id": "human-1", "prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."},  # human-only, verdict chosen
    {"id": "nowhere", "verdict": "chosen"},  # no such AI pair, no texts: ignored
]


def test_overrides_by_hand(tmp_path):
    ai = load_preferences(write_jsonl(tmp_path / "ai.jsonl", toy_pairs(6, soft=True)))
    human = load_human_labels(write_jsonl(tmp_path / "human.jsonl", HUMAN))
    assert human["pair-0"].verdict == "chosen" and human["human-1"].pair is not None
    train, held, counts, unmatched = apply_human_labels(ai[:4], ai[4:], human)
    by_id = {r.id: r for r in train + held}
    assert (by_id["pair-0"].chosen, by_id["pair-0"].label_prob) == (ai[0].chosen, 1.0)  # was 0.9
    assert (by_id["pair-1"].chosen, by_id["pair-1"].rejected, by_id["pair-1"].label_prob) == \
        (ai[1].rejected, ai[1].chosen, 1.0)
    assert by_id["pair-2"].label_prob == 0.5
    assert by_id["pair-3"] == ai[3]  # skipped: the AI label stays
    assert [r.id for r in held] == ["pair-4", "pair-5"] and held == ai[4:]
    assert train[-1].id == "human-1" and train[-1].chosen == "Hi!" and train[-1].label_prob == 1.0
    assert counts.as_dict() == {"ai": 3, "human_agreed": 1, "human_overturned": 1, "human_ties": 1,
                                "human_skipped": 1, "human_only": 1, "unmatched": 1}
    assert unmatched == ["nowhere"]


@pytest.mark.parametrize("row, message", [
    ({"id": "a", "verdict": "maybe"}, ":1: field 'verdict' must be one of chosen, rejected, tie, skip"),
    ({"verdict": "chosen"}, ":1: missing field 'id'"),
    ({"id": "a"}, ":1: field 'verdict' must be one of"),
    ({"id": "a", "prompt": "q", "chosen": "", "rejected": "r"}, ":1: field 'chosen'"),
])
def test_bad_human_rows_name_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "human.jsonl", [row])
    with pytest.raises(DataError) as err:
        load_human_labels(path)
    assert f"{path}{message}" in str(err.value)


def test_hard_labels_leave_out_human_ties(tmp_path):
    data = write_jsonl(tmp_path / "ai.jsonl", toy_pairs(6))
    human = write_jsonl(tmp_path / "human.jsonl", HUMAN)
    split = read_preference_split("rm", data, None, 0.0, 0, False, "use_label_prob", human)
    assert "pair-2" not in {r.id for r in split.train} and split.ties_dropped == 1
    assert split.human["human_only"] == 1 and len(split.train) == 6  # 6 AI − 1 tie + 1 human-only


def test_rm_trains_on_hybrid_labels_and_counts_them(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "ai.jsonl", toy_pairs(8, soft=True))
    human = write_jsonl(tmp_path / "human.jsonl", HUMAN)
    out = tmp_path / "rm"
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={out}", "run.progress=false", f"rm.model={tiny_model_dir}", f"rm.data={data}",
        f"rm.human_labels={human}", "rm.max_steps=1", "rm.micro_batch_size=2", "rm.gradient_accumulation_steps=1",
        "rm.eval_fraction=0.25", "rm.checkpoint_every=0"])
    rm.train(cfg.run, cfg.rm)
    summary = json.loads((out / "summary.json").read_text())
    counts = summary["hybrid_labels"]
    assert counts["human_only"] == 1 and counts["unmatched"] == 1
    assert counts["ai"] + counts["human_agreed"] + counts["human_overturned"] + counts["human_ties"] == 8
    assert summary["train_pairs"] + summary["eval_pairs"] == 9  # 8 AI pairs (soft labels keep the tie) + 1
