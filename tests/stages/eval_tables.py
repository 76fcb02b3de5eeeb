"""A table judge and a table reward model for the eval value test (test_eval_values.py)."""

from __future__ import annotations

# P(first better) by (first, second); the reverse order is 1 - P (a position-consistent judge)
TABLE = {
    ("good", "bad"): 0.9,
    ("good", "bad bad bad"): 0.9,
    ("fine", "fine"): 0.5,
    ("long answer here", "short"): 0.8,
    ("short", "long answer here"): 0.3,  # position bias: 0.8 shown first, 0.7 when shown second
}


def table_judge(prompts, firsts, seconds):
    out = []
    for f, s in zip(firsts, seconds):
        if (f, s) in TABLE:
            out.append(TABLE[(f, s)])
        elif (s, f) in TABLE:
            out.append(1.0 - TABLE[(s, f)])
        else:
            out.append(0.2 if f == "bad" else 0.8 if s == "bad" else 0.5)
    return out
