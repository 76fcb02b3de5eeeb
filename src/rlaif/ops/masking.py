"""Masked reductions over padded token tensors.

Conventions used throughout ``rlaif.ops``:

* ``mask`` is broadcastable to ``x`` and may be ``bool`` or floating point. A float mask acts as a weight:
  position ``i`` contributes ``x[i] * mask[i]`` to sums and ``mask[i]`` to the count. Zero weight means
  "outside the mask".
* Values outside the mask never leak, even when they are NaN or inf: selection is done with
  ``torch.where`` (not with ``x * mask``, since ``nan * 0 == nan``).
* An empty mask (count 0) gives a mean of 0, not NaN, so an empty micro-batch cannot poison a gradient.

Nothing is detached by these functions.
"""

from __future__ import annotations

import torch

__all__ = ["masked_sum", "masked_mean", "masked_var", "whiten", "whiten_with"]


def _select(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x * mask`` inside the mask and exactly 0 outside, NaN/inf-safe. Output has the broadcast shape."""
    if mask.dtype == torch.bool:
        return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    inside = mask != 0
    weighted = x * mask.to(x.dtype)
    return torch.where(inside, weighted, torch.zeros((), dtype=weighted.dtype, device=weighted.device))


def _count(x: torch.Tensor, mask: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Sum of mask weights (broadcast to ``x``), over everything or along ``dim``; dtype of ``x``."""
    m = torch.broadcast_to(mask, torch.broadcast_shapes(x.shape, mask.shape))
    m = m.to(x.dtype if x.is_floating_point() else torch.float32)
    return m.sum() if dim is None else m.sum(dim=dim)


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over the positions where ``mask`` is set.

    Shapes: ``x`` any shape, e.g. ``(b, t)``; ``mask`` broadcastable to ``x``. Returns a 0-dim tensor when
    ``dim`` is None, otherwise ``x`` reduced along ``dim`` (e.g. ``(b,)`` for ``dim=-1``).

    Formula: ``sum_i where(mask_i, x_i * mask_i, 0)`` (a float mask weights each element).
    NaN/inf outside the mask are ignored. Detaches nothing.
    """
    selected = _select(x, mask)
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the masked positions: ``sum(x * mask) / sum(mask)``.

    Shapes: ``x`` e.g. ``(b, t)``; ``mask`` broadcastable to ``x``. Returns 0-dim when ``dim`` is None, else
    reduced along ``dim`` (e.g. ``(b,)`` per-row means for ``dim=-1``).

    A reduction with an empty mask returns 0 (not NaN). NaN/inf outside the mask are ignored.
    Detaches nothing.
    """
    total = masked_sum(x, mask, dim)
    count = _count(x, mask, dim).to(total.dtype)
    safe = torch.where(count != 0, count, torch.ones_like(count))
    return torch.where(count != 0, total / safe, torch.zeros_like(total))


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over ALL masked elements (a single 0-dim tensor).

    Shapes: ``x`` e.g. ``(b, t)``; ``mask`` broadcastable to ``x``; returns 0-dim.

    Formula: ``mu = masked_mean(x, mask)``; ``var = sum(mask * (x - mu)^2) / n`` with ``n = sum(mask)``;
    if ``unbiased``, multiplied by the Bessel correction ``n / (n - 1)``.

    Raises ``ValueError`` if ``unbiased`` and ``n < 2`` (reads ``n`` on the host: one device sync).
    Detaches nothing.
    """
    mean = masked_mean(x, mask)
    centered_sq = (x - mean) ** 2
    count = _count(x, mask, None).to(mean.dtype)
    var = masked_mean(centered_sq, mask)
    if unbiased:
        n = float(count.item())
        if n < 2:
            raise ValueError(f"masked_var(unbiased=True) needs at least 2 masked elements, got {n:g}")
        var = var * (count / (count - 1))
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to zero mean and unit variance over the masked positions.

    Shapes: ``x`` e.g. ``(b, t)``; ``mask`` broadcastable to ``x``; output has the broadcast shape.

    Formula: ``(x - mu) / sqrt(var + eps)`` with ``mu = masked_mean(x, mask)`` and
    ``var = masked_var(x, mask, unbiased=True)`` (statistics over the whole masked tensor, as in the usual
    PPO advantage whitening). If ``shift_mean`` is False the mean is added back: ``mu + (x - mu)/sqrt(..)``
    (rescale only). The output is exactly 0 outside the mask. Raises ``ValueError`` when the mask holds
    fewer than 2 elements (see ``masked_var``).

    Detaches nothing (callers whitening advantages should pass detached advantages).
    """
    return whiten_with(x, mask, masked_mean(x, mask), masked_var(x, mask, unbiased=True), shift_mean, eps)


def whiten_with(x: torch.Tensor, mask: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``whiten`` with given statistics (e.g. those of a batch spread over several processes).

    Shapes: ``x`` e.g. ``(b, t)``; ``mask`` broadcastable to ``x``; ``mean``, ``var`` 0-dim (or broadcastable).
    Formula: ``(x - mean) / sqrt(var + eps)``, plus ``mean`` when ``shift_mean`` is False; exactly 0 outside
    the mask. Detaches nothing.
    """
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return _select(out, mask.bool() if mask.dtype != torch.bool else mask)
