"""Preference pairs for reward-model training: `{"id", "prompt", "chosen", "rejected", "label_prob"?, "margin"?,
"judge"?}` JSONL rows.

- `prompt`: the question (or `messages` ending with a user turn: the reward model, like PPO's reward source,
  is shown the last user turn);
- `chosen`, `rejected`: non-empty answers, `chosen` the preferred one;
- `label_prob`: optional number in [0, 1], the probability that `chosen` is better (soft labels, e.g. from an
  AI judge asked in both orders);
- `margin`: optional finite number, subtracted from `r_chosen - r_rejected` in the loss (Llama 2 style);
- `judge`: optional metadata about who labelled the pair (kept, never read).
Ids are unique (a row without one gets `line-N`). Errors name the file, the line and the field.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .jsonl import DataError, collect_unique, iter_jsonl, require_str
from .prompts import parse_messages


@dataclass(frozen=True)
class PreferenceRow:
    id: str
    prompt: str  # the question the reward model sees (the last user turn)
    chosen: str
    rejected: str
    label_prob: float | None = None  # P(chosen is better); None = a hard label (1)
    margin: float | None = None  # per-row margin; None = the config's
    where: str = field(default="", compare=False)  # "file:line" for messages


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
    if "prompt" in obj:
        prompt = require_str(obj, "prompt", where)
    elif "messages" in obj:
        prompt = parse_messages(obj, where)[-1][1]
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
    return PreferenceRow(str(rid), prompt, chosen, rejected, label_prob, margin, where)


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


__all__ = ["PreferenceRow", "PreferenceSplit", "load_preferences", "read_preference_split", "row_from_object",
           "drop_ties"]


def load_preference_split(section: str, data: str, eval_data: str | None, eval_fraction: float, seed: int
                          ) -> tuple[list[PreferenceRow], list[PreferenceRow]]:
    """(train, held-out) preference rows of a stage (`rm`, `dpo`): `eval_data` when given, else a seeded
    `eval_fraction` split of `data`, else no held-out rows. Bad rows fail here, naming file:line."""
    from ..config import ConfigError
    from .sft import split_eval

    if not data:
        raise ConfigError(f"config key '{section}.data': set a preference JSONL file (e.g. the output of "
                          "`rlaif label`)")
    rows = load_preferences(data)
    if eval_data is not None:
        return rows, load_preferences(eval_data)
    if eval_fraction > 0:
        if len(rows) < 2:
            raise DataError(f"{data}: 1 pair cannot be split for {section}.eval_fraction (set "
                            f"{section}.eval_fraction=0)")
        return split_eval(rows, eval_fraction, seed)  # type: ignore[return-value,arg-type]
    return rows, []


@dataclass
class PreferenceSplit:
    """The (train, held-out) preference rows of a stage, after the hard-label rule."""

    train: list[PreferenceRow]
    eval: list[PreferenceRow]
    ties_dropped: int = 0  # hard labels: rows with label_prob = 0.5 left out


def read_preference_split(section: str, data: str, eval_data: str | None, eval_fraction: float, seed: int,
                          soft_labels: bool, soft_key: str) -> PreferenceSplit:
    """`load_preference_split`, then with hard labels (`soft_labels` false; its key `section.soft_key`) every tie
    left out: a row with label_prob = 0.5 has no winner, and would train as "chosen wins". Every row a tie: a
    ConfigError naming the key."""
    from ..config import ConfigError

    rows, held = load_preference_split(section, data, eval_data, eval_fraction, seed)
    if soft_labels:
        return PreferenceSplit(rows, held)
    (rows, n_train), (held, n_held) = drop_ties(rows), drop_ties(held)
    if n_train + n_held:
        logging.getLogger(f"rlaif.{section}").warning(
            "%s: %d tied pairs (label_prob = 0.5) left out of the hard labels", section, n_train + n_held)
    if not rows:
        raise ConfigError(f"config key '{section}.{soft_key}': every training pair is a tie (label_prob = 0.5); "
                          "hard labels need a winner")
    return PreferenceSplit(rows, held, n_train + n_held)
