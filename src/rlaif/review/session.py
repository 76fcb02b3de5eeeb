"""Human spot-checks of AI labels: what to show, in which order, and how far people agree with the judge.

1) read the label rows (`rlaif label`'s preferences.jsonl: id, prompt, chosen, rejected, label_prob, judge);
2) sample them stratified by the judge's confidence P(chosen better): the bins [0.5, 0.6), [0.6, 0.75),
[0.75, 0.9), [0.9, 1] are each shuffled (seeded) and taken in turn, so any prefix of the queue covers every
bin; 3) show each pair blind: which answer is on the left comes from a hash of (seed, pair id), never from the
judge, and the judge's verdict is revealed only after the person answered; 4) append and fsync each verdict
to human_labels.jsonl (`{id, verdict: chosen | rejected | tie | skip, choice: left | right | tie | skip, ...}`;
a restart skips the ids already there, the last verdict of an id counts); 5) agreement: in the left/right frame
of the blind display, so the judge's side is not a constant, the share of compared pairs (skips left out) where
person and judge pick the same side (tie counts as a side) with its Wilson 95 % interval, and Cohen's kappa
over {left, right, tie}; the same for each member of a judge panel.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.human_labels import HumanVerdict, load_human_labels
from ..data.jsonl import DataError, append_jsonl, collect_unique, cut_torn_tail, iter_jsonl
from ..data.preferences import row_from_object
from ..ops import cohens_kappa, wilson_interval

BIN_EDGES = (0.6, 0.75, 0.9)  # P(chosen better) bins: [0.5, 0.6) [0.6, 0.75) [0.75, 0.9) [0.9, 1]
CHOICES = ("left", "right", "tie", "skip")


@dataclass(frozen=True)
class LabelRow:
    id: str
    prompt: str
    chosen: str
    rejected: str
    label_prob: float  # the judge's P(chosen better), >= 0.5
    members: dict[str, float] | None  # a panel's members: each one's P(chosen better)


def members_in_chosen_frame(judge: Any) -> dict[str, float] | None:
    """A panel row's members (stored as P(response i better) like `prob_a_better`) as P(chosen better)."""
    if not isinstance(judge, dict) or not isinstance(judge.get("members"), dict):
        return None
    chosen_is_a = float(judge.get("prob_a_better", 1.0)) >= 0.5
    out = {}
    for name, m in judge["members"].items():
        if isinstance(m, dict) and isinstance(m.get("prob_a_better"), (int, float)):
            p = float(m["prob_a_better"])
            out[str(name)] = p if chosen_is_a else 1.0 - p
    return out or None


def load_label_rows(path: str | Path) -> list[LabelRow]:
    """Step 1: every row validated like `rlaif rm` reads it; errors name file, line and field."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder; give a labels JSONL or a run folder with label/preferences.jsonl")

    def rows():
        for n, obj in iter_jsonl(path):
            where = f"{path}:{n}"
            r = row_from_object(obj, where, f"line-{n}")
            p = 1.0 if r.label_prob is None else r.label_prob
            yield where, LabelRow(r.id, r.prompt, r.chosen, r.rejected, p, members_in_chosen_frame(obj.get("judge")))

    return collect_unique(rows(), f"{path}: no label rows (the file is empty)")


def confidence_bin(p_chosen: float) -> int:
    return sum(p_chosen >= e for e in BIN_EDGES)


def stratified_sample(rows: list[LabelRow], n: int, seed: int) -> list[LabelRow]:
    """Step 2: up to n rows, taking the confidence bins in turn (each bin shuffled with the seed)."""
    bins: list[list[LabelRow]] = [[] for _ in range(len(BIN_EDGES) + 1)]
    for r in rows:
        bins[confidence_bin(r.label_prob)].append(r)
    for i, b in enumerate(bins):
        random.Random(f"{seed}:{i}").shuffle(b)
    out: list[LabelRow] = []
    while len(out) < n and any(bins):
        for b in bins:
            if b and len(out) < n:
                out.append(b.pop(0))
    return out


def left_is_chosen(seed: int, pair_id: str) -> bool:
    """Step 3: the blind display's order, from the pair id alone (the same on every restart)."""
    return hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()[0] % 2 == 0


def side_of(p_chosen: float) -> str:
    return "chosen" if p_chosen > 0.5 else "rejected" if p_chosen < 0.5 else "tie"


def position(verdict: str, left_chosen: bool) -> int:
    """chosen | rejected | tie in the display's frame: 0 left, 1 right, 2 tie."""
    if verdict == "tie":
        return 2
    return 0 if (verdict == "chosen") == left_chosen else 1


def agreement(human: list[int], other: list[int]) -> dict[str, Any]:
    """Figures of two raters in the display frame ((n,) positions 0/1/2): agreement, Wilson 95 % CI, kappa."""
    n = len(human)
    agree = sum(h == o for h, o in zip(human, other))
    lo, hi = wilson_interval(agree, n)
    kappa = cohens_kappa(human, other, 3)
    return {"compared": n, "agree": agree, "agreement": agree / n if n else None,
            "agreement_ci": [round(lo, 4), round(hi, 4)] if n else None,
            "kappa": None if math.isnan(kappa) else round(kappa, 4)}


def agreement_stats(rows: dict[str, LabelRow], human: dict[str, HumanVerdict], seed: int) -> dict[str, Any]:
    """Step 5: person vs judge (and vs each panel member) over the reviewed pairs that are in `rows`, in the
    left/right frame the person saw (a verdict's `left`; for files without it, the hash of (seed, id))."""
    reviewed = [(rows[i], h.verdict) for i, h in human.items() if i in rows]
    compared = [(r, v) for r, v in reviewed if v != "skip"]
    frames = [human[r.id].left == "chosen" if human[r.id].left else left_is_chosen(seed, r.id) for r, _ in compared]
    people = [position(v, lc) for (_, v), lc in zip(compared, frames)]
    out = {"reviewed": len(reviewed), "skipped": len(reviewed) - len(compared),
           "verdicts": {v: sum(x == v for _, x in reviewed) for v in ("chosen", "rejected", "tie", "skip")},
           **agreement(people, [position(side_of(r.label_prob), lc) for (r, _), lc in zip(compared, frames)])}
    names = sorted({m for r, _ in compared for m in (r.members or {})})
    if names:
        out["members"] = {}
        for name in names:
            pairs = [(p, position(side_of(r.members[name]), lc)) for (r, _), lc, p in zip(compared, frames, people)
                     if r.members and name in r.members]
            out["members"][name] = agreement([p for p, _ in pairs], [j for _, j in pairs])
    return out


class ReviewSession:
    """The queue of one review, its file of verdicts and the figures; thread-safe (one server, many requests)."""

    def __init__(self, labels: str | Path, out: str | Path, sample: int = 50, seed: int = 0):
        self.labels, self.out, self.seed = Path(labels), Path(out), seed
        rows = load_label_rows(self.labels)
        self.rows = {r.id: r for r in rows}
        self.queue = stratified_sample(rows, sample, seed)
        cut_torn_tail(self.out)  # 4. a kill during a write loses at most that row
        self.human: dict[str, HumanVerdict] = load_human_labels(self.out) if self.out.exists() else {}
        self.lock = threading.Lock()

    def next_item(self) -> dict[str, Any]:
        with self.lock:
            done = sum(r.id in self.human for r in self.queue)
            row = next((r for r in self.queue if r.id not in self.human), None)
            base = {"done": done, "total": len(self.queue)}
            if row is None:
                return {**base, "item": None}
            lc = left_is_chosen(self.seed, row.id)
            return {**base, "item": {"id": row.id, "prompt": row.prompt, "left": row.chosen if lc else row.rejected,
                                     "right": row.rejected if lc else row.chosen}}

    def record(self, pair_id: str, choice: str) -> dict[str, Any]:
        """Append one verdict (fsynced) and return the judge's verdict on that pair plus the figures so far."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        row = self.rows.get(pair_id)
        if row is None:
            raise KeyError(pair_id)
        lc = left_is_chosen(self.seed, pair_id)
        verdict = choice if choice in ("tie", "skip") else "chosen" if (choice == "left") == lc else "rejected"
        entry = {"id": pair_id, "verdict": verdict, "choice": choice, "left": "chosen" if lc else "rejected",
                 "ai_label_prob": round(row.label_prob, 6), "confidence_bin": confidence_bin(row.label_prob),
                 "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        with self.lock:
            append_jsonl(self.out, entry)
            self.human[pair_id] = HumanVerdict(pair_id, verdict, None, f"{self.out}", entry["left"])
        judge_side = ["left", "right", "tie"][position(side_of(row.label_prob), lc)]
        members = {name: ["left", "right", "tie"][position(side_of(p), lc)] for name, p in (row.members or {}).items()}
        return {"judge": {"side": judge_side, "p_chosen": round(row.label_prob, 4), "members": members},
                "stats": self.stats()}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return agreement_stats(self.rows, dict(self.human), self.seed)


def resolve_labels(target: str | Path) -> Path:
    """A labels JSONL, or a run folder holding label/preferences.jsonl (or preferences.jsonl)."""
    p = Path(target)
    if p.is_dir():
        for cand in (p / "label" / "preferences.jsonl", p / "preferences.jsonl"):
            if cand.is_file():
                return cand
        raise DataError(f"{p}: no label/preferences.jsonl or preferences.jsonl in this folder")
    if not p.is_file():
        raise DataError(f"{p}: file does not exist")
    return p


__all__ = ["ReviewSession", "LabelRow", "load_label_rows", "stratified_sample", "left_is_chosen", "agreement_stats",
           "resolve_labels", "confidence_bin", "CHOICES"]
