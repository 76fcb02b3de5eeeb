"""Judge templates that carry what the seeds list: few-shot exemplars (balanced or seeded order), a rubric judged
criterion by criterion (weighted or holistic), several templates averaged or rotated per pair; every template
validated on load; the built-ins through a real local judge and `rlaif label` (tiny random Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlaif.config import ConfigError, load_config
from rlaif.configs import RootConfig
from rlaif.judges import JudgeConfig, judge_pairs_both_orders, make_judge, verdict_stats
from rlaif.judges.base import JudgeCall
from rlaif.judges.templates import better_first, load_template, render, variant_templates
from rlaif.judges.variants import VariantJudge, rotation_index
from rlaif.stages import label

BASE = {"name": "t", "mode": "pairwise", "labels": ["A", "B"], "user": "Q {prompt}\n{first}\n{second}\nA or B?"}


def write_template(tmp_path: Path, **extra) -> str:
    path = tmp_path / f"t{len(list(tmp_path.glob('t*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({**BASE, **extra}), encoding="utf-8")
    return str(path)


EXAMPLES = [{"prompt": f"q{k}", "better": f"good {k}", "worse": f"bad {k}"} for k in range(6)]


def test_few_shot_exemplars_are_earlier_turns_in_balanced_order(tmp_path):
    t = load_template(write_template(tmp_path, system="sys", examples=EXAMPLES))
    msgs = render(t, "real question", first="x", second="y")
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * 6 + ["user"]
    assert [m["content"] for m in msgs if m["role"] == "assistant"] == ["A", "B"] * 3  # half each position
    first_user = msgs[1]["content"]
    assert "<<<QUESTION>>>\nq0" in first_user and first_user.index("good 0") < first_user.index("bad 0")
    assert msgs[3]["content"].index("bad 1") < msgs[3]["content"].index("good 1")  # better shown second
    assert "real question" in msgs[-1]["content"] and "good" not in msgs[-1]["content"]
    # random order: seeded by the template's hash (the same every load), and it does use both positions
    r = load_template(write_template(tmp_path, examples=EXAMPLES * 4, example_order="random"))
    order = [better_first(r, k) for k in range(24)]
    assert order == [better_first(load_template(r.source), k) for k in range(24)] and 0 < sum(order) < 24
    labels = [m["content"] for m in render(r, "q", first="x", second="y") if m["role"] == "assistant"]
    assert labels == ["A" if f else "B" for f in order]


def test_shipped_templates_load_and_carry_their_features():
    few = load_template("pairwise-fewshot")
    assert len(few.examples) == 4 and [better_first(few, k) for k in range(4)] == [True, False, True, False]
    rubric = load_template("pairwise-rubric")
    variants, final = variant_templates(rubric)
    assert [(n, w) for n, _, w in variants] == [("accuracy", 2.0), ("helpfulness", 1.5), ("clarity", 1.0),
                                                ("safety", 1.0)]
    assert final is None and variants[0][1].user.startswith("Judge the two answers on this criterion only")
    assert variants[0][1].user.endswith(rubric.user) and variants[0][1].labels == rubric.labels


@pytest.mark.parametrize("extra, message", [
    ({"examples": [{"prompt": "q", "better": "b"}]}, "examples[0]: field 'worse' must be a non-empty string"),
    ({"examples": [{"prompt": "q", "better": "b", "worse": "w", "score": 3}]}, "examples[0]: unknown field(s) score"),
    ({"examples": EXAMPLES, "example_order": "sorted"}, "field 'example_order' must be balanced or random"),
    ({"rubric": {"criteria": [{"name": "a"}]}}, "rubric.criteria[0]: field 'description' must be a non-empty"),
    ({"rubric": {"criteria": [{"name": "a", "description": "d", "weight": -1}]}}, "criteria[0].weight: must be"),
    ({"rubric": {"combine": "vote", "criteria": [{"name": "a", "description": "d"}]}}, "rubric.combine: must be"),
    ({"rubric": {"criteria": [{"name": "a", "description": "d"}, {"name": "a", "description": "e"}]}}, "unique"),
    ({"rubrik": {}}, "unknown field(s) rubrik"),
    ({"mode": "pointwise", "labels": ["1", "2"], "user": "{prompt} {response}", "examples": EXAMPLES},
     "field 'examples' needs a pairwise template"),
])
def test_bad_templates_name_the_file_and_field(tmp_path, extra, message):
    path = write_template(tmp_path, **extra)
    with pytest.raises(ValueError) as err:
        load_template(path)
    assert path in str(err.value) and message in str(err.value)


class TemplateJudge:
    """A backend that reads its `template` on every call, as the local and api judges do: P(first better) is
    the number in the template's name, whatever the answers (so combining is checkable by hand)."""

    def __init__(self, template):
        self.template, self.id, self.calls = template, "fake", []

    def metadata(self):
        return {"judge": self.id, "backend": "fake"}

    def prob_first_better(self, prompts, firsts, seconds, references=None):
        self.calls.append((self.template.name, len(prompts)))
        p = float(self.template.name.rsplit("/", 1)[-1].split("=")[1])
        return [JudgeCall(p) for _ in prompts]


def named(t, name):
    from dataclasses import replace

    return replace(t, name=name)


def test_variants_average_holistic_and_rotate_by_hand(tmp_path):
    t = load_template(write_template(tmp_path))
    base = TemplateJudge(named(t, "base"))
    avg = VariantJudge(base, [("x", named(t, "p=0.9"), 3.0), ("y", named(t, "p=0.5"), 1.0)], "average")
    (v,) = judge_pairs_both_orders(avg, ["q"], ["a"], ["b"])
    # p_ab = p_ba = .75·.9 + .25·.5 = .8 (pure position bias in both templates) -> label ½(.8 + 1 − .8) = .5
    assert v.p_ab == pytest.approx(0.8) and v.label_prob == pytest.approx(0.5)
    assert set(v.members) == {"x", "y"} and base.template.name == "base"  # the template is restored
    hol = VariantJudge(base, [("x", named(t, "p=0.9"), 1.0)], "holistic", final=named(t, "p=0.3"))
    calls = hol.prob_first_better(["q"], ["a"], ["b"])
    assert calls[0].prob == pytest.approx(0.3) and calls[0].members == {"x": 0.9, "overall": 0.3}
    # rotate: one template per pair, the same in both orders of that pair
    rot = VariantJudge(base, [("x", named(t, "p=0.9"), 1.0), ("y", named(t, "p=0.2"), 1.0)], "rotate")
    pairs = [(f"q{i}", f"a{i}", f"b{i}") for i in range(40)]
    verdicts = judge_pairs_both_orders(rot, [p for p, _, _ in pairs], [a for _, a, _ in pairs],
                                       [b for _, _, b in pairs])
    for (q, a, b), v in zip(pairs, verdicts):
        name = ["x", "y"][rotation_index(q, a, b, 2)]
        assert list(v.members) == [name] and rotation_index(q, b, a, 2) == rotation_index(q, a, b, 2)
    used = {list(v.members)[0] for v in verdicts}
    assert used == {"x", "y"}
    stats = verdict_stats(verdicts)  # per-template figures over the pairs each template judged
    assert set(stats["members"]) == {"x", "y"} and stats["members"]["x"]["consistency_rate"] == 0.0


def test_variant_config_errors(tmp_path):
    other = write_template(tmp_path, labels=["1", "2"])
    with pytest.raises(ConfigError, match="only the local and api backends take templates"):
        load_config(RootConfig, None, ["label.judge.backend=embedding", "label.judge.template_variants=[pairwise]"])
    cfg = JudgeConfig(backend="local", model="nowhere", template="pairwise", template_variants=[other])
    with pytest.raises(ConfigError, match="label.judge.template_variants.*variants must share them"):
        make_judge(cfg, key="label.judge")


def test_rubric_and_few_shot_through_a_real_local_judge_and_label(tmp_path, tiny_model_dir, prompts_file):
    # one model load, four criteria each judged in both orders; per-criterion soft labels in every row
    out = tmp_path / "label"
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={out}", "run.progress=false", "run.threads=1", f"label.policy={tiny_model_dir}",
        f"label.prompts={prompts_file}", "label.max_prompts=3", "label.responses_per_prompt=2",
        "label.max_new_tokens=6", "label.judge.backend=local", f"label.judge.model={tiny_model_dir}",
        "label.judge.template=pairwise-rubric", "label.judge.min_label_mass=0.0", "label.judge.max_length=512"])
    label.train(cfg.run, cfg.label)
    rows = [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines()]
    assert rows
    weights = {"accuracy": 2.0, "helpfulness": 1.5, "clarity": 1.0, "safety": 1.0}
    for r in rows:
        members = r["judge"]["members"]
        assert set(members) == set(weights)
        mean = sum(weights[n] * m["prob_a_better"] for n, m in members.items()) / sum(weights.values())
        assert r["judge"]["prob_a_better"] == pytest.approx(mean, abs=1e-5)
    summary = json.loads((out / "label_summary.json").read_text())
    assert summary["judge"]["variant_mode"] == "average" and set(summary["members"]) == set(weights)
    # few-shot: the same tiny judge reads the exemplars as earlier turns (a longer input than without them)
    few = make_judge(JudgeConfig(backend="local", model=tiny_model_dir, template="pairwise-fewshot",
                                 min_label_mass=0.0, max_length=1024))
    plain = make_judge(JudgeConfig(backend="local", model=tiny_model_dir, min_label_mass=0.0, max_length=1024))
    a, b = few.prob_first_better(["q"], ["x"], ["y"])[0], plain.prob_first_better(["q"], ["x"], ["y"])[0]
    assert a.tokens > b.tokens + 100 and 0.0 <= a.prob <= 1.0
