"""The reward model's data: preference pairs read and split, and scored (chosen and rejected in one pass)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.preference_split import PreferenceSplit, read_preference_split
from ..data.preferences import PreferenceRow
from ..rewards.sources import encode_reward_inputs
from .rm_config import RMConfig

RMData = PreferenceSplit


def read_data(cfg: RMConfig, seed: int) -> PreferenceSplit:
    """Read, validate and split every input file; bad rows fail here, before anything is written."""
    cfg.validate()
    return read_preference_split("rm", cfg.data, cfg.eval_data, cfg.eval_fraction, seed, cfg.use_label_prob, "use_label_prob",
                                 cfg.human_labels)


def rewards_of(model, tokenizer, fmt: str, prompts: Sequence[str], answers: Sequence[str], max_length: int,
               device, amp) -> tuple[torch.Tensor, int]:
    """(n,) float32 rewards (raw head outputs, no bias) of n (question, answer) inputs in one forward pass,
    and how many inputs filled max_length (cut, or exactly that long)."""
    enc = encode_reward_inputs(tokenizer, fmt, prompts, answers, max_length)
    n_full = int((enc["attention_mask"].sum(1) >= max_length).sum())
    enc = {k: v.to(device) for k, v in enc.items()}
    extra = {"use_cache": False} if fmt == "chat" else {}
    with amp():
        logits = model(**enc, **extra).logits
    return logits[:, 0].float(), n_full


def pair_rewards(model, tokenizer, fmt: str, rows: list[PreferenceRow], max_length: int, device, amp
                 ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(b,) chosen and (b,) rejected rewards: the 2b answers share one forward pass."""
    b = len(rows)
    r, n_full = rewards_of(model, tokenizer, fmt, [x.prompt for x in rows] * 2,
                           [x.chosen for x in rows] + [x.rejected for x in rows], max_length, device, amp)
    return r[:b], r[b:], n_full
