"""Example verifiable rewards (`module:function` callables) used by the demo config and the tests."""

from __future__ import annotations


def _about_n_words(responses: list[str], n: int) -> list[float]:
    return [1.0 - abs(len(r.split()) - n) / n for r in responses]


def about_20_words(prompts: list[str], responses: list[str]) -> list[float]:
    """1 at exactly 20 words, falling linearly to 0 at 0 or 40 words (and below 0 past 40)."""
    return _about_n_words(responses, 20)


def about_10_words(prompts: list[str], responses: list[str]) -> list[float]:
    """1 at exactly 10 words, falling linearly to 0 at 0 or 20 words (and below 0 past 20)."""
    return _about_n_words(responses, 10)


def mentions_question_word(prompts: list[str], responses: list[str]) -> list[float]:
    """Fraction of the question's content words (> 3 letters) that the answer repeats: a crude relevance."""
    out = []
    for q, r in zip(prompts, responses):
        words = {w.strip("?.,!").lower() for w in q.split() if len(w.strip("?.,!")) > 3}
        said = {w.strip("?.,!").lower() for w in r.split()}
        out.append(len(words & said) / max(1, len(words)))
    return out


def brevity(prompts: list[str], responses: list[str]) -> list[float]:
    """Shorter answers score higher: minus the number of words, in tens (an empty answer scores 0)."""
    return [-len(r.split()) / 10.0 for r in responses]


def long_words(prompts: list[str], responses: list[str]) -> list[float]:
    """Share of words with 7 or more letters: a dense style signal every token can move."""
    out = []
    for r in responses:
        words = [w.strip(".,;:!?()\"'") for w in r.split()]
        words = [w for w in words if w]
        out.append(sum(len(w) >= 7 for w in words) / max(1, len(words)))
    return out
