"""Preference data for the reward-model tests (imported as `rm_data`: tests/ is on sys.path beside conftest.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

QA = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("How do I boil an egg?", "Put it in boiling water for about nine minutes, then cool it in cold water."),
    ("Define photosynthesis.", "Plants turn light, water and carbon dioxide into sugar and oxygen."),
    ("Write a two-line poem about rain.", "Soft rain taps the glass,\nand the grey afternoon hums."),
    ("Why is the sky blue?", "Air scatters blue light more than red light."),
    ("Give one tip for sleeping well.", "Go to bed at the same time every night."),
    ("What is 2 plus 2?", "2 plus 2 is 4."),
]


def write_jsonl(path: Path, rows: list) -> str:
    """Rows as JSON lines (a str row is written as is: malformed lines on purpose)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def toy_pairs(n: int = 8, soft: bool = False, margins: bool = False) -> list[dict]:
    """n pairs over QA: chosen = the question's own answer, rejected = the next question's answer (a short
    refusal on every third row, so answers differ in length). Optional label_prob / margin fields."""
    rows = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        rejected = "I don't know." if i % 3 == 2 else QA[(i + 1) % len(QA)][1]
        row = {"id": f"pair-{i}", "prompt": q, "chosen": a, "rejected": rejected, "judge": {"name": "test"}}
        if soft and i % 2 == 0:
            row["label_prob"] = [0.9, 0.6, 0.75, 1.0][(i // 2) % 4]
        if margins and i % 4 == 1:
            row["margin"] = 0.5
        rows.append(row)
    return rows


def reference_pairs(prompt_file: str | Path, seed: int = 0) -> list[dict]:
    """A learnable preference set from a prompt file with references: chosen = the row's own reference answer,
    rejected = the reference answer of a different prompt of another category (seeded choice)."""
    rows = [json.loads(line) for line in Path(prompt_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(seed)
    out = []
    for r in rows:
        others = [o for o in rows if o.get("category") != r.get("category")] or [o for o in rows if o is not r]
        other = rng.choice(others)
        out.append({"id": r["id"], "prompt": r["prompt"], "chosen": r["reference"], "rejected": other["reference"],
                    "judge": {"name": "reference-vs-other-prompt"}})
    return out
