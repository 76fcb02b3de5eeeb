"""`rlaif critique` (Constitutional AI's supervised phase): constitutions validated with clear errors, K rounds of
critique and revision with seeded principles, rows that are both SFT and preference data, resume after a torn
write, the real local critic end to end through the CLI and into SFT, `pipeline.stages` starting with critique,
and judging by constitution principles (tiny random Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlaif.cli import main as cli_main
from rlaif.config import ConfigError, load_config
from rlaif.configs import RootConfig
from rlaif.data.constitution import load_constitution
from rlaif.data.jsonl import DataError
from rlaif.data.preferences import load_preferences
from rlaif.data.sft import load_sft_rows
from rlaif.judges import JudgeConfig, judge_pairs_both_orders, make_judge
from rlaif.judges.base import Generated
from rlaif.judges.variants import rotation_index
from rlaif.pipeline import DONE
from rlaif.stages import critique


class ScriptedCritic:
    """A critic whose words are predictable: the critique names the principle it was asked about (found in the
    request), the revision wraps the current answer. Only the loop's bookkeeping is under test with it."""

    id = "scripted"

    def __init__(self, principles):
        self.requests = {p.critique: p.name for p in principles}

    def metadata(self):
        return {"judge": self.id}

    def generate(self, conversations, max_new_tokens):
        out = []
        for conv in conversations:
            last = conv[-1]["content"]
            if last in self.requests:
                out.append(Generated(f"critique by {self.requests[last]}"))
            else:
                out.append(Generated(f"[{conv[1]['content']}]"))  # the answer shown to the critic, revised
        return out


def critique_args(out: Path, model: str, prompts: str, *extra: str) -> list[str]:
    return [f"run.output_dir={out}", "run.progress=false", "run.threads=1", f"critique.policy={model}",
            f"critique.prompts={prompts}", "critique.max_new_tokens=6", "critique.critique_tokens=6",
            "critique.revision_tokens=8", "critique.prompts_per_batch=4", *extra]


def test_builtin_constitution_and_bad_files(tmp_path):
    c = load_constitution("builtin:default")
    assert len(c.principles) == 8 and {"accuracy", "harmlessness", "honesty"} <= {p.name for p in c.principles}
    bad = tmp_path / "c.yaml"
    for data, message in [({"principles": []}, "non-empty list 'principles'"),
                          ({"principles": [{"name": "a", "critique": "c"}]}, "principles[0].revision: must be"),
                          ({"principles": [{"name": "a", "critique": "c", "revision": "r", "x": 1}]}, "unknown key"),
                          ({"principles": [{"name": "a", "critique": "c", "revision": "r"}] * 2}, "must be unique"),
                          ({"rules": []}, "needs a mapping")]:
        bad.write_text(yaml.safe_dump(data))
        with pytest.raises(DataError) as err:
            load_constitution(str(bad))
        assert str(bad) in str(err.value) and message in str(err.value)
    with pytest.raises(DataError, match="no such built-in"):
        load_constitution("builtin:nope")
    with pytest.raises(ConfigError, match="critique.critic.backend': the critic must write text"):
        load_config(RootConfig, None, ["critique.critic.backend=embedding"])


def test_rounds_rows_and_resume(tmp_path, tiny_model_dir, prompts_file):
    constitution = load_constitution("builtin:default")
    out = tmp_path / "c"
    cfg = load_config(RootConfig, None, critique_args(out, tiny_model_dir, prompts_file, "critique.revisions=2"))
    path = critique.train(cfg.run, cfg.critique, critic=ScriptedCritic(constitution.principles))
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) >= 6 and len({r["id"] for r in rows}) == len(rows)  # empty first answers are skipped
    for r in rows:
        c = r["critique"]
        names = [critique.draw_principle(constitution.principles, 0, r["id"], k).name for k in range(2)]
        assert c["principles"] == names  # seeded per (prompt, round): the same on every rerun
        assert c["critiques"] == [f"critique by {n}" for n in names]
        assert c["revisions"] == [f"[{r['rejected']}]", f"[[{r['rejected']}]]"]  # round 2 revises round 1
        assert r["chosen"] == f"[[{r['rejected']}]]" and r["label_prob"] == 1.0
        assert c["constitution"] == "rlaif-default" and c["critic"] == "scripted"
    # the same file is SFT data (the revision is trained) and preference data (revision over original)
    assert [s.completion for s in load_sft_rows(str(path))] == [r["chosen"] for r in rows]
    assert [p.rejected for p in load_preferences(path)] == [r["rejected"] for r in rows]
    summary = json.loads((out / "critique_summary.json").read_text())
    assert summary["prompts"] == len(rows) and summary["revised"] == len(rows)
    assert sum(summary["principles_used"].values()) == 2 * len(rows)
    # a kill in the middle of a write: the torn row is cut, only the missing prompts are redone, none twice
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + lines[3][:20])
    critique.train(cfg.run, cfg.critique, critic=ScriptedCritic(constitution.principles))
    again = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in rows)
    assert {r["id"]: r for r in again} == {r["id"]: r for r in rows}  # the same answers and revisions


def test_real_local_critic_through_the_cli_then_sft(tmp_path, tiny_model_dir, prompts_file, capsys):
    out = tmp_path / "c"
    args = critique_args(out, tiny_model_dir, prompts_file, "critique.max_prompts=4", "critique.critic.backend=local",
                         f"critique.critic.model={tiny_model_dir}", "critique.critic.max_length=256")
    assert cli_main(["critique", *args]) == 0
    assert "rows in" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "critique.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["critique"]["critic"].startswith("local:") for r in rows)
    assert all(len(r["critique"]["critiques"]) == 1 and r["chosen"] for r in rows)
    sft_out = tmp_path / "sft"
    assert cli_main(["sft", f"run.output_dir={sft_out}", "run.progress=false", "run.threads=1",
                     f"sft.model={tiny_model_dir}", f"sft.data={out / 'critique.jsonl'}", "sft.max_steps=1",
                     "sft.micro_batch_size=2", "sft.gradient_accumulation_steps=1", "sft.eval_fraction=0",
                     "sft.max_length=64", "sft.checkpoint_every=0"]) == 0
    assert (sft_out / "model").is_dir()


def test_pipeline_starts_with_critique(tmp_path, tiny_model_dir, prompts_file):
    cfg = {"run": {"output_dir": str(tmp_path / "run"), "threads": 1, "progress": False},
           "pipeline": {"stages": ["critique", "sft"], "report": False},
           "critique": {"prompts": prompts_file, "max_prompts": 3, "max_new_tokens": 6, "critique_tokens": 6,
                        "revision_tokens": 6, "critic": {"backend": "local", "model": tiny_model_dir,
                                                         "max_length": 256}},
           "sft": {"model": tiny_model_dir, "max_steps": 1, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                   "eval_fraction": 0, "max_length": 64, "checkpoint_every": 0}}
    config = tmp_path / "p.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert cli_main(["pipeline", str(config)]) == 0
    root = tmp_path / "run"
    assert (root / "critique" / DONE).is_file() and (root / "sft" / DONE).is_file()
    sft_cfg = yaml.safe_load((root / "sft" / "config.yaml").read_text())
    assert sft_cfg["sft"]["data"] == str(root / "critique" / "critique.jsonl")
    assert sft_cfg["critique"]["policy"] == tiny_model_dir


def test_judging_by_constitution_principles(tiny_model_dir):
    judge = make_judge(JudgeConfig(backend="local", model=tiny_model_dir, constitution="builtin:default",
                                   min_label_mass=0.0, max_length=512))
    names = [p.name for p in load_constitution("builtin:default").principles]
    pairs = [(f"q{i}", f"answer {i}", f"other {i}") for i in range(12)]
    verdicts = judge_pairs_both_orders(judge, *map(list, zip(*pairs)))
    for (q, a, b), v in zip(pairs, verdicts):
        assert list(v.members) == [names[rotation_index(q, a, b, len(names))]]  # one principle per pair
    assert judge.metadata()["variant_mode"] == "rotate"
    with pytest.raises(ConfigError, match="constitution': use it or template_variants"):
        load_config(RootConfig, None, ["label.judge.constitution=builtin:default",
                                       "label.judge.template_variants=[pairwise]"])
