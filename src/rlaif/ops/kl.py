"""Sampled-token KL estimators and KL-coefficient controllers.

Reference: J. Schulman, "Approximating KL Divergence" (2020), http://joschu.net/blog/kl-approx.html, and
D. Ziegler et al., "Fine-Tuning Language Models from Human Preferences" (2019), for the adaptive
coefficient.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["kl", "FixedKLController", "AdaptiveKLController", "make_kl_controller"]

_ESTIMATORS = ("k1", "k2", "k3")


def kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(pi || ref)`` from the log-probs of tokens sampled from ``pi``.

    Shapes: any shape in (e.g. ``(b, t)``), same shape out; the two inputs must broadcast.

    With ``logr = logq - logp`` (``logp = logprobs``, ``logq = ref_logprobs``), Schulman (2020):

    * ``"k1"``: ``logp - logq`` (unbiased, high variance, can be negative per token);
    * ``"k2"``: ``0.5 * (logp - logq)^2`` (biased, low variance, >= 0);
    * ``"k3"``: ``exp(logr) - 1 - logr`` (unbiased, >= 0; computed as ``expm1(logr) - logr``).

    Unknown ``estimator`` -> ``ValueError``. Detaches nothing (callers building rewards pass detached
    log-probs; with grad it can be used directly as a loss term).
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k2":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if estimator == "k3":
        log_ratio = ref_logprobs - logprobs
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {_ESTIMATORS}")


def _as_float(x: float | torch.Tensor) -> float:
    return float(x.item()) if isinstance(x, torch.Tensor) else float(x)


class FixedKLController:
    """Constant KL coefficient: ``value`` never changes; ``update`` is a no-op."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        """Does nothing (kept for interface parity with ``AdaptiveKLController``)."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. (2019), section 2.2.

    ``update(current_kl, n_steps)``:
    ``e = clip(current_kl / target - 1, -0.2, 0.2)``; ``value *= 1 + e * n_steps / horizon``.

    ``current_kl`` is the measured KL per sequence (the same unit as ``target``); ``n_steps`` is the
    number of samples (episodes) the measurement covers.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | torch.Tensor, n_steps: int) -> None:
        proportional_error = min(max(_as_float(current_kl) / self.target - 1.0, -0.2), 0.2)
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult

    def state_dict(self) -> dict[str, Any]:
        """``{"value", "target", "horizon"}``; ``load_state_dict`` restores only ``value`` (the schedule
        comes from the config)."""
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


def make_kl_controller(
    kl_coef: float, target: float | None = None, horizon: float = 10000
) -> FixedKLController | AdaptiveKLController:
    """``AdaptiveKLController(kl_coef, target, horizon)`` if ``target`` is not None, else
    ``FixedKLController(kl_coef)``."""
    if target is not None:
        return AdaptiveKLController(kl_coef, target, horizon)
    return FixedKLController(kl_coef)
