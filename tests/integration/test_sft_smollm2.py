"""SFT on the real SmolLM2-135M-Instruct: the held-out answer loss falls."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlaif.config import load_config
from rlaif.configs import RootConfig
from rlaif.data.prompts import resolve_prompts_path
from rlaif.metrics import read_metrics
from rlaif.stages import sft

pytestmark = pytest.mark.slow


def _rows(builtin: str, n: int, path: Path) -> str:
    lines = resolve_prompts_path(builtin).read_text(encoding="utf-8").splitlines()[:n]
    rows = [json.loads(line) for line in lines]
    path.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"], "completion": r["reference"]}) + "\n"
                            for r in rows), encoding="utf-8")
    return str(path)


def test_heldout_loss_falls(tmp_path, smollm2_dir):
    train = _rows("builtin:demo-train", 24, tmp_path / "train.jsonl")
    heldout = _rows("builtin:demo-heldout", 8, tmp_path / "heldout.jsonl")
    cfg = load_config(RootConfig, None, [
        f"run.output_dir={tmp_path / 'run'}", "run.progress=false", "run.seed=0", "run.device=cpu",
        f"sft.model={smollm2_dir}", f"sft.data={train}", f"sft.eval_data={heldout}", "sft.max_length=128",
        "sft.epochs=2", "sft.micro_batch_size=4", "sft.gradient_accumulation_steps=1", "sft.learning_rate=5e-5",
        "sft.eval_every=0", "sft.checkpoint_every=0",
    ])
    final = sft.train(cfg.run, cfg.sft)
    rows = read_metrics(tmp_path / "run")
    before, after = rows[0]["eval_loss"], rows[-1]["eval_loss"]
    assert [r["step"] for r in rows] == list(range(13))  # 24 rows / 4 per step x 2 epochs
    assert rows[-1]["epoch"] == pytest.approx(2.0)
    # the answers are in the style of the references: the held-out answer loss falls clearly
    assert after < before - 0.1, (before, after)
    assert all(r["prompts_truncated"] == 0 for r in rows[1:])
    assert (final / "model.safetensors").is_file()
