"""Reward callables for the stage tests, referenced as `<abs path>/rewards_for_tests.py:function`."""

from __future__ import annotations


def length_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Longer answers score higher (characters / 10): a dense, varied signal on random tiny models."""
    return [len(r) / 10.0 for r in responses]


def constant_one(prompts: list[str], responses: list[str]) -> list[float]:
    return [1.0 for _ in responses]


def index_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """0, 1, 2, ... by row: deterministic, for ensemble arithmetic."""
    return [float(i) for i in range(len(responses))]


def question_length(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(q)) for q in prompts]
REWARDS_NOT_A_FUNCTION = 3


def shorter_wins_first_biased(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """A pairwise judge: P(first better) = 0.8 when the first answer is shorter, 0.2 when longer, 0.5 on equal
    length — plus 0.1 for whichever answer is shown first (a position bias the both-order average removes)."""
    out = []
    for f, s in zip(firsts, seconds):
        p = 0.8 if len(f) < len(s) else 0.2 if len(f) > len(s) else 0.5
        out.append(min(1.0, p + 0.1))
    return out


def recording_length_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """length_reward that also appends every question it scores to the file $RLAIF_TEST_SEEN (one JSON line per
    call), to see what a stage scored."""
    import json
    import os

    with open(os.environ["RLAIF_TEST_SEEN"], "a", encoding="utf-8") as f:
        f.write(json.dumps(list(prompts)) + "\n")
    return [len(r) / 10.0 for r in responses]


def longer_wins(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """A pairwise judge: P(first better) = 0.9 for the longer answer, 0.1 for the shorter, 0.5 on equal length."""
    return [0.9 if len(f) > len(s) else 0.1 if len(f) < len(s) else 0.5 for f, s in zip(firsts, seconds)]


def always_first(prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
    """A judge with pure position bias: P(first better) = 0.8 whatever the answers."""
    return [0.8 for _ in firsts]
