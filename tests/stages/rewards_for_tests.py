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
