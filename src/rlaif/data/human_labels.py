"""Human verdicts on preference pairs (`human_labels.jsonl`, written by `rlaif review`, or any JSONL of the same
shape), and hybrid labels: humans override the AI where they looked, the AI labels the bulk.

A row is `{"id": <pair id>, "verdict": "chosen" | "rejected" | "tie" | "skip", ...}`: the verdict is given in
the frame of the AI row with that id (`chosen`: the person agrees with the AI's winner; `rejected`: the other
answer is better). A row that also has `prompt`, `chosen` and `rejected` is a pair of its own: when no AI row has
its id it joins the data (verdict `chosen` by default: `chosen` is the person's winner). The last verdict of an id
counts (a person may revise one; `rlaif review` appends). Errors name the file, the line and the field.

`apply_human_labels`: an agreed or overturned AI pair becomes a hard label (label_prob 1, chosen = the person's
winner); a tie gets label_prob 0.5 (kept by soft labels, left out by the hard-label rule); `skip` and pairs
nobody reviewed keep the AI label.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .jsonl import DataError, iter_jsonl, require_str
from .preferences import PreferenceRow, row_from_object

VERDICTS = ("chosen", "rejected", "tie", "skip")


@dataclass(frozen=True)
class HumanVerdict:
    id: str
    verdict: str  # chosen | rejected | tie | skip, in the frame of the AI row with this id
    pair: PreferenceRow | None  # the texts, when the row carries them (a human-only pair)
    where: str
    left: str | None = None  # `rlaif review`: which answer the person saw on the left (chosen | rejected)


def load_human_labels(arg: str | Path) -> dict[str, HumanVerdict]:
    """Every id's last verdict; raises DataError naming file:line and field."""
    path = Path(arg).expanduser()
    out: dict[str, HumanVerdict] = {}
    for n, obj in iter_jsonl(path):
        where = f"{path}:{n}"
        rid = require_str(obj, "id", where) if not isinstance(obj.get("id"), int) else str(obj["id"])
        has_texts = all(k in obj for k in ("chosen", "rejected")) and ("prompt" in obj or "messages" in obj)
        verdict = obj.get("verdict", "chosen" if has_texts else None)
        if verdict not in VERDICTS:
            raise DataError(f"{where}: field 'verdict' must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        pair = row_from_object(obj, where, rid) if has_texts else None
        left = obj.get("left") if obj.get("left") in ("chosen", "rejected") else None
        out[rid] = HumanVerdict(rid, verdict, pair, where, left)
    return out


@dataclass(frozen=True)
class HybridCounts:
    ai: int  # AI labels used as they were
    human_agreed: int  # a person confirmed the AI's winner (now a hard label)
    human_overturned: int  # a person picked the other answer (chosen and rejected swapped, hard label)
    human_ties: int  # a person saw no winner (label_prob 0.5)
    human_skipped: int  # looked at, no verdict: the AI label stays
    human_only: int  # pairs only people labelled, added to the training rows
    unmatched: int  # verdicts on ids that are not in the data and carry no texts (ignored, with a warning)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def override(row: PreferenceRow, verdict: str) -> PreferenceRow:
    """One AI row after a person's verdict on it."""
    if verdict == "chosen":
        return replace(row, label_prob=1.0)
    if verdict == "rejected":
        return replace(row, chosen=row.rejected, rejected=row.chosen, label_prob=1.0)
    if verdict == "tie":
        return replace(row, label_prob=0.5)
    return row


def apply_human_labels(train: list[PreferenceRow], held: list[PreferenceRow], human: dict[str, HumanVerdict]
                       ) -> tuple[list[PreferenceRow], list[PreferenceRow], HybridCounts, list[str]]:
    """(train, held-out, counts, unmatched ids): human verdicts override the AI rows of the same id in both
    splits (so the held-out set keeps its pairs); human-only pairs join the training rows."""
    counts = dict.fromkeys(("chosen", "rejected", "tie", "skip"), 0)
    seen: set[str] = set()

    def apply(rows: list[PreferenceRow]) -> list[PreferenceRow]:
        out = []
        for row in rows:
            h = human.get(row.id)
            if h is not None:
                seen.add(row.id)
                counts[h.verdict] += 1
                row = override(row, h.verdict)
            out.append(row)
        return out

    train, held = apply(train), apply(held)
    extra = [h.pair for rid, h in human.items() if rid not in seen and h.pair is not None and h.verdict != "skip"]
    extra = [override(p, human[p.id].verdict) for p in extra]
    unmatched = [rid for rid, h in human.items() if rid not in seen and h.pair is None]
    n_ai = len(train) + len(held) - sum(counts[v] for v in ("chosen", "rejected", "tie"))
    return train + extra, held, HybridCounts(n_ai, counts["chosen"], counts["rejected"], counts["tie"],
                                             counts["skip"], len(extra), len(unmatched)), unmatched


__all__ = ["HumanVerdict", "HybridCounts", "load_human_labels", "apply_human_labels", "override", "VERDICTS"]
