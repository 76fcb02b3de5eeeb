"""Supervised fine-tuning math: the learning-rate schedule, completion-only labels, masked token CE.

Shapes: b sequences of t tokens, right padded; v vocabulary entries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["IGNORE_INDEX", "cosine_with_floor_lr", "completion_labels", "token_ce_sum"]

IGNORE_INDEX = -100  # the label of a position that is not trained (prompt, padding)


def cosine_with_floor_lr(step: int, total_steps: int, peak_lr: float, floor_ratio: float = 0.3,
                         warmup_steps: int = 0) -> float:
    """Learning rate of optimizer step ``step`` (0-based) out of ``total_steps``.

    Linear warm-up, then a half cosine from ``peak_lr`` down to ``floor = floor_ratio * peak_lr``
    (the seed's CosineAnnealing with eta_min = 0.3 x lr, stretched so that the last step uses the floor):

        step <  W:  lr = peak * (step + 1) / W            (the last warm-up step reaches the peak)
        step >= W:  p  = (step - W) / max(1, T - W - 1)   (0 on the first step after warm-up, 1 on the last)
                    lr = floor + (peak - floor) * (1 + cos(pi * min(p, 1))) / 2

    Steps past the end stay at the floor. ``floor_ratio = 1`` gives a constant learning rate.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    floor = floor_ratio * peak_lr
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps - 1))
    return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def completion_labels(input_ids: torch.Tensor, prompt_lengths: torch.Tensor, lengths: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels that train the completion only: ``(b, t)`` ids, ``(b,)`` prompt lengths, ``(b,)`` lengths.

    ``labels[i, j] = input_ids[i, j]`` for ``prompt_lengths[i] <= j < lengths[i]``, else ``ignore_index``.
    The masks come from lengths, never from ``ids != pad``: a tokenizer whose pad equals its EOS (the GGUF
    SmolLM2) would otherwise hide the end-of-turn token the model must learn to emit.
    """
    pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]  # (1, t)
    keep = (pos >= prompt_lengths[:, None]) & (pos < lengths[:, None])  # (b, t)
    return torch.where(keep, input_ids, torch.full_like(input_ids, ignore_index))


def token_ce_sum(logits: torch.Tensor, labels: torch.Tensor,
                 ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over labelled positions: ``(b, t, v)`` logits, ``(b, t)`` labels.

    Position j's logits predict token j + 1: ``sum_{j: labels[j+1] != ignore} -log softmax(logits[j])[labels[j+1]]``.
    Returns ``(sum, count)`` (0-dim tensors; ``count`` is a float). Divide the sums of all micro-batches of one
    optimizer step by the step's total count, so micro-batch 1 x accumulation 8 equals 8 x 1. Computed in fp32.
    Nothing is detached.
    """
    shift_logits = logits[:, :-1, :].float()  # (b, t-1, v)
    shift_labels = labels[:, 1:]  # (b, t-1)
    total = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                            ignore_index=ignore_index, reduction="sum")
    count = (shift_labels != ignore_index).sum().to(total.dtype)
    return total, count
