"""API keys never land in what a run writes: with fake keys in the environment (and in every secret-looking config
key the config has), `rlaif sft`, `rm`, `ppo` and `label` run on tiny models, then every byte they wrote —
config.yaml, metrics, summaries, checkpoints (json, safetensors, pickles), preference rows — and everything they
printed or logged is searched for the keys."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import get_type_hints

import yaml
from rm_data import QA, toy_pairs, write_jsonl

from rlaif.cli import main as cli_main
from rlaif.config import SECRET_MARKERS, field, save_config
from rlaif.configs import RootConfig

REWARDS = Path(__file__).resolve().with_name("rewards_for_tests.py")

JUDGE = '''
def longer(prompts, firsts, seconds):
    return [0.9 if len(f) > len(s) else 0.1 if len(f) < len(s) else 0.5 for f, s in zip(firsts, seconds)]
'''

ENV_KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "HF_TOKEN")


def secret_config_keys(cls: type = RootConfig, prefix: str = "") -> list[str]:
    """Dotted names of the string keys whose values `to_dict` redacts (names ending in `_env` hold the *name*
    of an environment variable, not a secret)."""
    keys = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += secret_config_keys(tp, f"{prefix}{f.name}.")
        elif (any(m in f.name.lower() for m in SECRET_MARKERS) and not f.name.lower().endswith("_env")
              and "str" in str(tp)):
            keys.append(prefix + f.name)
    return keys


def files_holding(root: Path, secrets: list[str]) -> list[str]:
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [f"{path}: {s[:12]}..." for s in secrets if s.encode() in data]
    return hits


def test_no_stage_writes_or_prints_an_api_key(tmp_path, tiny_model_dir, prompts_file, monkeypatch, capfd, caplog):
    secrets = {name: f"sk-rlaif-leak-test-{name.lower()}-{uuid.uuid4().hex}" for name in ENV_KEYS}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    config_secret = f"sk-rlaif-config-leak-{uuid.uuid4().hex}"
    in_config = [f"{key}={config_secret}" for key in secret_config_keys()]
    caplog.set_level(logging.DEBUG)  # every record of every logger, more than the console shows
    judge = tmp_path / "judge.py"
    judge.write_text(JUDGE, encoding="utf-8")
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [{"id": f"r{i}", "prompt": q, "completion": a}
                                                    for i, (q, a) in enumerate(QA)])
    prefs = write_jsonl(tmp_path / "prefs.jsonl", toy_pairs(8))
    runs = tmp_path / "runs"
    common = ["run.progress=false", "run.seed=0", "run.threads=1", *in_config]

    assert cli_main(["sft", f"run.output_dir={runs / 'sft'}", *common, f"sft.model={tiny_model_dir}",
                     f"sft.data={sft_data}", "sft.max_steps=2", "sft.micro_batch_size=2",
                     "sft.gradient_accumulation_steps=1", "sft.eval_fraction=0.25", "sft.checkpoint_every=1"]) == 0
    assert cli_main(["rm", f"run.output_dir={runs / 'rm'}", *common, f"rm.model={tiny_model_dir}",
                     f"rm.data={prefs}", "rm.max_steps=2", "rm.micro_batch_size=2",
                     "rm.gradient_accumulation_steps=1", "rm.eval_fraction=0.25", "rm.checkpoint_every=1"]) == 0
    assert cli_main(["ppo", f"run.output_dir={runs / 'ppo'}", *common, f"ppo.policy={runs / 'sft' / 'model'}",
                     f"ppo.prompts={prompts_file}", f"ppo.reward.function={REWARDS}:length_reward",
                     "ppo.iterations=2", "ppo.batch_size=4", "ppo.micro_batch_size=2",
                     "ppo.gradient_accumulation_steps=2", "ppo.generation.max_new_tokens=4",
                     "ppo.checkpoint_every=1", "ppo.save_every=1"]) == 0
    assert cli_main(["label", f"run.output_dir={runs / 'label'}", *common, f"label.policy={tiny_model_dir}",
                     f"label.prompts={prompts_file}", "label.max_prompts=2", "label.max_new_tokens=4",
                     "label.judge.backend=function", f"label.judge.function={judge}:longer"]) == 0

    written = [p for p in runs.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"config.yaml", "metrics.jsonl", "trainer_state.json", "summary.json", "preferences.jsonl",
            "label_summary.json", "model.safetensors", "optimizer.pt", "rng.pt"} <= names  # the runs did write
    everything = [*secrets.values(), config_secret]
    assert files_holding(runs, everything) == []
    out, err = capfd.readouterr()
    for text in (out, err, caplog.text):
        assert not [s for s in everything if s in text]
    if in_config:  # the config keys that hold secrets are shown redacted in every resolved config
        for cfg_file in runs.glob("*/config.yaml"):
            assert "***" in cfg_file.read_text(encoding="utf-8")


@dataclass
class _Judge:
    api_key: str = field("", help="a secret")
    api_key_env: str = field("OPENAI_API_KEY", help="the name of the variable that holds it")
    auth_token: str | None = field(None, help="another secret")
    max_new_tokens: int = field(8, help="not a secret, though its name holds 'token'")


@dataclass
class _Root:
    judge: _Judge = field(default_factory=_Judge, help="a section")


def test_resolved_config_redacts_secret_keys_and_keeps_variable_names(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(_Root(_Judge(api_key="sk-abc123", auth_token="tok-xyz")), path)
    text = path.read_text(encoding="utf-8")
    assert "sk-abc123" not in text and "tok-xyz" not in text
    assert yaml.safe_load(text) == {"judge": {"api_key": "***", "api_key_env": "OPENAI_API_KEY",
                                              "auth_token": "***", "max_new_tokens": 8}}
