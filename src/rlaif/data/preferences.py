"""Preference pairs for reward-model training: `{"id", "prompt", "chosen", "rejected", "label_prob"?, "margin"?,
"judge"?}` JSONL rows.

- `prompt`: the question, or `messages` (a conversation ending with a user turn): the reward model and the judge
  read the conversation as a transcript (`history_text`), DPO encodes the turns in the chat template as SFT
  and PPO do; with both, `messages` wins;
- `chosen`, `rejected`: non-empty answers, `chosen` the preferred one;
- `label_prob`: optional number in [0, 1], the probability that `chosen` is better (soft labels, e.g. from an
  AI judge asked in both orders);
- `margin`: optional finite number, subtracted from `r_chosen - r_rejected` in the loss (Llama 2 style);
- `judge`: optional metadata about who labelled the pair (kept, never read).
Ids are unique (a row without one gets `line-N`). Errors name the file, the line and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jsonl import DataError, collect_unique, iter_jsonl, require_str
from .prompts import history_text, parse_messages


@dataclass(frozen=True)
class PreferenceRow:
    id: str
    prompt: str  # the question the reward model and judge see (a multi-turn row: the transcript, history_text)
    chosen: str
    rejected: str
    label_prob: float | None = None  # P(chosen is better); None = a hard label (1)
    margin: float | None = None  # per-row margin; None = the config's
    where: str = field(default="", compare=False)  # "file:line" for messages
    messages: tuple[tuple[str, str], ...] | None = None  # the conversation before the answers (None: one user turn)

    @property
    def turns(self) -> tuple[tuple[str, str], ...]:
        """The conversation the answers follow (one user turn for a `prompt` row)."""
        return self.messages if self.messages is not None else (("user", self.prompt),)


def _number(obj: dict[str, Any], key: str, where: str) -> float | None:
    if key not in obj or obj[key] is None:
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(f"{where}: field '{key}' must be a number, got {type(v).__name__} {v!r}")
    if not math.isfinite(v):
        raise DataError(f"{where}: field '{key}' must be finite, got {v!r}")
    return float(v)


def row_from_object(obj: dict[str, Any], where: str, fallback_id: str) -> PreferenceRow:
    """One validated row; raises DataError naming `where` and the field."""
    messages = None
    if "messages" in obj:
        messages = parse_messages(obj, where)
        prompt = history_text(messages)
        if len(messages) == 1 and messages[0][0] == "user":
            messages = None  # the same as a `prompt` row
    elif "prompt" in obj:
        prompt = require_str(obj, "prompt", where)
    else:
        raise DataError(f"{where}: missing field 'prompt' (or 'messages')")
    chosen = require_str(obj, "chosen", where)
    rejected = require_str(obj, "rejected", where)
    label_prob = _number(obj, "label_prob", where)
    if label_prob is not None and not 0.0 <= label_prob <= 1.0:
        raise DataError(f"{where}: field 'label_prob' must be in [0, 1], got {label_prob!r}")
    margin = _number(obj, "margin", where)
    rid = obj.get("id", fallback_id)
    if rid is None:
        rid = fallback_id
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise DataError(f"{where}: field 'id' must be a string or an integer")
    return PreferenceRow(str(rid), prompt, chosen, rejected, label_prob, margin, where, messages)


def load_preferences(arg: str | Path) -> list[PreferenceRow]:
    """Read and validate every row of a preference JSONL (nothing is returned until all rows passed)."""
    path = Path(arg).expanduser()
    if path.is_dir():
        raise DataError(f"{path}: a folder; preferences are a JSONL file")
    return collect_unique(
        ((f"{path}:{n}", row_from_object(obj, f"{path}:{n}", f"line-{n}")) for n, obj in iter_jsonl(path)),
        f"{path}: no preference rows (the file is empty)")


def drop_ties(rows: list[PreferenceRow]) -> tuple[list[PreferenceRow], int]:
    """(rows without ties, how many were ties): for the hard-label path, where a row with label_prob = ½ (the
    judge could not decide, or an API verdict failed to parse) would otherwise train as "chosen wins" (p = 1)."""
    kept = [r for r in rows if r.label_prob is None or abs(r.label_prob - 0.5) > 1e-9]
    return kept, len(rows) - len(kept)


__all__ = ["PreferenceRow", "load_preferences", "row_from_object", "drop_ties"]
