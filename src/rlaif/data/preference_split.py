"""A stage's preference data (`rm`, `dpo`): the train / held-out split, hybrid human labels, the hard-label rule."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .human_labels import apply_human_labels, load_human_labels
from .jsonl import DataError
from .preferences import PreferenceRow, drop_ties, load_preferences


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
    human: dict[str, int] | None = None  # hybrid labels: how many pairs came from people and from the AI


def read_preference_split(section: str, data: str, eval_data: str | None, eval_fraction: float, seed: int,
                          soft_labels: bool, soft_key: str, human_labels: str = "") -> PreferenceSplit:
    """`load_preference_split`; then the human verdicts of `human_labels` (a JSONL, `data/human_labels.py`)
    override the AI labels of the same pairs and human-only pairs join the training rows; then with hard labels
    (`soft_labels` false; its key `section.soft_key`) every tie left out: a row with label_prob = 0.5 has no
    winner, and would train as "chosen wins". Every row a tie: a ConfigError naming the key."""
    from ..config import ConfigError

    rows, held = load_preference_split(section, data, eval_data, eval_fraction, seed)
    log = logging.getLogger(f"rlaif.{section}")
    human = None
    if human_labels:
        rows, held, counts, unmatched = apply_human_labels(rows, held, load_human_labels(human_labels))
        human = counts.as_dict()
        log.info("%s: hybrid labels from %s: %s", section, human_labels, ", ".join(f"{k} {v}" for k, v in
                                                                                  human.items()))
        if unmatched:
            log.warning("%s: %d human verdicts name pairs that are not in %s and carry no texts (e.g. %s); ignored",
                        section, len(unmatched), data, unmatched[0])
    if soft_labels:
        return PreferenceSplit(rows, held, human=human)
    (rows, n_train), (held, n_held) = drop_ties(rows), drop_ties(held)
    if n_train + n_held:
        log.warning(
            "%s: %d tied pairs (label_prob = 0.5) left out of the hard labels", section, n_train + n_held)
    if not rows:
        raise ConfigError(f"config key '{section}.{soft_key}': every training pair is a tie (label_prob = 0.5); "
                          "hard labels need a winner")
    return PreferenceSplit(rows, held, n_train + n_held, human)


__all__ = ["PreferenceSplit", "load_preference_split", "read_preference_split"]
