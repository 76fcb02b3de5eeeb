"""Example verifiable rewards (`module:function` callables) used by the demo config and the tests."""

from __future__ import annotations


def about_20_words(prompts: list[str], responses: list[str]) -> list[float]:
    """1 at exactly 20 words, falling linearly to 0 at 0 or 40 words (and below 0 past 40)."""
    return [1.0 - abs(len(r.split()) - 20) / 20.0 for r in responses]


def mentions_question_word(prompts: list[str], responses: list[str]) -> list[float]:
    """Fraction of the question's content words (> 3 letters) that the answer repeats: a crude relevance."""
    out = []
    for q, r in zip(prompts, responses):
        words = {w.strip("?.,!").lower() for w in q.split() if len(w.strip("?.,!")) > 3}
        said = {w.strip("?.,!").lower() for w in r.split()}
        out.append(len(words & said) / max(1, len(words)))
    return out
