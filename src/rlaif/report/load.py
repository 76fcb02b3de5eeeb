"""Read a pipeline run folder for the report; every part is optional and nothing here raises on bad files.

Layout (each stage writes its own subfolder; `rlaif pipeline` adds timings.json): sft/metrics.jsonl (+ summary.json), label/label_summary.json
and preferences.jsonl, rm/metrics.jsonl and summary.json, ppo/metrics.jsonl, audit/audit.json,
eval/eval.json and samples.jsonl. A missing file is "not run"; an unreadable one is reported as a problem on
the page, and a JSONL line cut by a kill is skipped (and counted), so a report can be written mid-run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INF_SENTINEL = 1e307  # MetricsLogger writes +-inf as +-1e308 (JSON has no infinity)


@dataclass
class Stage:
    """One stage's files: metrics rows, JSON documents by name, JSONL rows by name, and read problems."""

    name: str
    folder: Path
    metrics: list[dict[str, Any]] = field(default_factory=list)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ran(self) -> bool:
        return bool(self.metrics or self.docs or self.rows)


@dataclass
class RunData:
    run_dir: Path
    stages: dict[str, Stage]
    timings: dict[str, Any] = field(default_factory=dict)  # timings.json of `rlaif pipeline`: stage -> seconds
    root_problems: list[str] = field(default_factory=list)
    human_review: dict[str, Any] | None = None  # `rlaif review` figures of label/human_labels.jsonl
    rounds: dict[str, Any] = field(default_factory=dict)  # rounds.json of `pipeline.rounds` > 1

    def doc(self, stage: str, name: str) -> dict[str, Any]:
        return self.stages[stage].docs.get(name, {})

    @property
    def problems(self) -> list[str]:
        return [*self.root_problems, *(p for s in self.stages.values() for p in s.problems)]


# stage -> (metrics?, JSON documents, JSONL files)
LAYOUT: dict[str, tuple[bool, tuple[str, ...], tuple[str, ...]]] = {
    "sft": (True, ("summary.json",), ()),
    "audit": (False, ("audit.json",), ()),
    "label": (False, ("label_summary.json",), ("preferences.jsonl",)),
    "rm": (True, ("summary.json",), ()),
    "ppo": (True, (), ()),
    "eval": (False, ("eval.json",), ("samples.jsonl",)),
}


def read_json(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """The object in `path`, or None (missing: silently; unreadable or not an object: noted in `problems`)."""
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path}: unreadable ({type(e).__name__}: {e})")
        return None
    if not isinstance(obj, dict):
        problems.append(f"{path}: expected a JSON object, found {type(obj).__name__}")
        return None
    return obj


def read_jsonl(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """Object rows of `path` ([] when missing); bad lines (e.g. cut by a kill) are skipped and counted."""
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        problems.append(f"{path}: unreadable ({e})")
        return []
    rows, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            bad += 1
    if bad:
        problems.append(f"{path}: {bad} unreadable line(s) skipped")
    return rows


def load_run(run_dir: str | Path) -> RunData:
    """Everything the report shows, read once."""
    run_dir = Path(run_dir)
    stages = {}
    for name, (has_metrics, docs, jsonls) in LAYOUT.items():
        st = Stage(name, run_dir / name)
        if has_metrics:
            st.metrics = read_jsonl(st.folder / "metrics.jsonl", st.problems)
        for doc in docs:
            obj = read_json(st.folder / doc, st.problems)
            if obj is not None:
                st.docs[doc] = obj
        for rows in jsonls:
            found = read_jsonl(st.folder / rows, st.problems)
            if found:
                st.rows[rows] = found
        stages[name] = st
    data = RunData(run_dir, stages)
    data.timings = read_json(run_dir / "timings.json", data.root_problems) or {}
    data.human_review = read_human_review(run_dir / "label", data.root_problems)
    data.rounds = read_json(run_dir / "rounds.json", data.root_problems) or {}
    return data


def read_human_review(folder: Path, problems: list[str]) -> dict[str, Any] | None:
    """Agreement of people with the judge (`rlaif review`), when label/human_labels.jsonl exists."""
    from ..data.human_labels import load_human_labels
    from ..data.jsonl import DataError
    from ..review.session import agreement_stats, load_label_rows

    human, labels = folder / "human_labels.jsonl", folder / "preferences.jsonl"
    if not human.is_file() or not labels.is_file():
        return None
    try:
        return agreement_stats({r.id: r for r in load_label_rows(labels)}, load_human_labels(human), seed=0)
    except DataError as e:
        problems.append(f"human review not shown: {e}")
        return None


def number(v: Any) -> float | None:
    """A plottable float, or None (missing, not a number, a bool, NaN or the +-inf sentinel)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    if not math.isfinite(v) or abs(v) >= INF_SENTINEL:
        return None
    return v


def step_key(rows: list[dict[str, Any]]) -> str | None:
    """The x key of metrics rows: "step" (sft, rm) or "iteration" (ppo)."""
    for key in ("step", "iteration"):
        if any(key in r for r in rows):
            return key
    return None


def metric_series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float | None]]:
    """(steps, values) over the rows that logged `key`; a logged NaN/inf stays as None (a gap in the line)."""
    sk = step_key(rows)
    xs: list[float] = []
    ys: list[float | None] = []
    for i, r in enumerate(rows):
        if key not in r:
            continue
        x = number(r.get(sk)) if sk else float(i)
        if x is None:
            continue
        v = r[key]
        if v is not None and number(v) is None and not isinstance(v, float):
            continue  # a string or a bool: not a series
        xs.append(x)
        ys.append(number(v))
    return xs, ys


def numeric_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Keys with at least one finite number, in first-seen order (the step key left out)."""
    sk = step_key(rows)
    seen: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if k != sk and k not in seen and number(v) is not None:
                seen[k] = None
    return list(seen)


def last_value(rows: list[dict[str, Any]], key: str) -> float | None:
    """The last finite value logged under `key`."""
    for r in reversed(rows):
        v = number(r.get(key))
        if v is not None:
            return v
    return None


def first_value(rows: list[dict[str, Any]], key: str) -> float | None:
    for r in rows:
        v = number(r.get(key))
        if v is not None:
            return v
    return None


__all__ = ["RunData", "Stage", "load_run", "metric_series", "numeric_keys", "last_value", "first_value", "number",
           "step_key", "read_json", "read_jsonl"]
