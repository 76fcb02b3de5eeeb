"""Direct Preference Optimization math: the per-pair sigmoid loss (hard, label-smoothed or soft labels) and the
summed log-probability of a sequence's labelled tokens.

Shapes: b preference pairs; ``*_logps`` are ``(b,)`` sums of per-token log-probabilities of a whole answer
(prompt and padding excluded), as ``sequence_logprobs`` computes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .logprobs import logprobs_from_logits
from .sft import IGNORE_INDEX

__all__ = ["dpo_loss", "sequence_logprobs"]


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7) with the conservative
    DPO / label-smoothed variant (Mitchell 2023, "A note on DPO with noisy preferences"; TRL ``label_smoothing``).

    Shapes: the four ``*_logps`` ``(b,)``; ``label_smoothing`` a float or ``(b,)`` -> ``(losses,
    chosen_rewards, rejected_rewards)``, each ``(b,)``. Reduce ``losses`` yourself (mean over the pairs of an
    optimizer step; see ``rlaif.ops.losses`` on normalising across micro-batches).

    Formula, with ``eps = label_smoothing``::

        chosen_rewards   = beta * (policy_chosen_logps   - ref_chosen_logps)      (implicit rewards)
        rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
        z      = chosen_rewards - rejected_rewards = beta * h
        losses = (1 - eps) * -logsigmoid(z) + eps * -logsigmoid(-z)

    ``eps = 0`` is the original sigmoid loss. A constant ``eps`` says "each label is flipped with probability
    eps". A per-pair tensor carries SOFT LABELS: with ``p = P(chosen is better)`` (e.g. the ``label_prob`` an AI
    judge wrote) pass ``label_smoothing = 1 - p``; the loss is then the cross-entropy between ``p`` and
    ``sigmoid(z)``, minimised at ``sigmoid(z) = p`` (at ``p = 0.5`` it pulls the margin to 0). Every ``eps``
    must lie in ``[0, 1]`` (ValueError otherwise). At ``z = 0`` (policy == reference) every row costs ``log 2``.
    ``logsigmoid`` keeps the loss finite for any ``|z|``.

    Detaches the reference log-probabilities and ``label_smoothing`` (targets) and both returned rewards (for
    logging); gradient flows to the policy log-probabilities through ``losses``.
    """
    shapes = {tuple(t.shape) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                                       ref_rejected_logps)}
    if len(shapes) != 1 or policy_chosen_logps.dim() != 1:
        raise ValueError(f"the four log-probability tensors must share one (b,) shape, got {sorted(shapes)}")
    if isinstance(label_smoothing, torch.Tensor):
        eps = label_smoothing.detach().to(policy_chosen_logps.dtype)
        if eps.dim() not in (0, 1) or (eps.dim() == 1 and eps.shape != policy_chosen_logps.shape):
            raise ValueError(f"label_smoothing {tuple(eps.shape)} must be a float or (b,) = "
                             f"{tuple(policy_chosen_logps.shape)}")
        if eps.numel() and not bool(((eps >= 0) & (eps <= 1)).all()):
            raise ValueError("label_smoothing values must lie in [0, 1]")
    else:
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
        eps = label_smoothing
    chosen_logratio = policy_chosen_logps - ref_chosen_logps.detach()  # (b,)
    rejected_logratio = policy_rejected_logps - ref_rejected_logps.detach()  # (b,)
    z = beta * (chosen_logratio - rejected_logratio)  # (b,)
    losses = -(1.0 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    return losses, (beta * chosen_logratio).detach(), (beta * rejected_logratio).detach()


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens: ``(b, t, v)`` logits, ``(b, t)`` labels -> ``(b,)``.

    Position j's logits predict token j + 1 (the labels of ``rlaif.ops.completion_labels``, not shifted):
    ``out[i] = sum_{j: labels[i, j+1] != ignore} log softmax(logits[i, j])[labels[i, j+1]]``, in float32. A row
    without labelled tokens gives 0. Nothing is detached.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    shift_labels = labels[:, 1:]  # (b, t-1)
    keep = shift_labels != ignore_index  # (b, t-1)
    tokens = torch.where(keep, shift_labels, torch.zeros_like(shift_labels))  # any valid id where ignored
    per_token = logprobs_from_logits(logits[:, :-1, :], tokens)  # (b, t-1) float32
    return torch.where(keep, per_token, torch.zeros_like(per_token)).sum(dim=1)
