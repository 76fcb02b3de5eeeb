"""Per-token log-probabilities, entropies and exact KL from language-model logits.

All outputs are float32 whatever the logits dtype (bf16/fp16 logits are cast once). ``temperature``
divides the logits before the softmax; it must be > 0. Sampling and scoring must use the same
temperature, otherwise the PPO ratio compares two different distributions.
"""

from __future__ import annotations

import torch

__all__ = ["logprobs_from_logits", "entropy_from_logits", "full_kl_from_logits"]


def _scaled_float(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``float32(logits) / temperature`` with at most one (b, t, v) float32 allocation.

    When ``logits`` is not float32, ``.float()`` makes a private copy which is divided in place (safe for
    autograd: the cast's backward saves nothing). When it already is float32, ``.float()`` returns the
    caller's tensor, so we divide out of place.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = logits.float()
    if temperature != 1.0:
        x = x.div_(temperature) if x is not logits else x / temperature
    return x


def _safe_plogp_terms(logp: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``exp(logp) * other`` with the convention ``0 * anything = 0`` where ``logp == -inf``.

    Needed when some logits are ``-inf`` (top-k / vocabulary masking): ``0 * -inf`` would be NaN. The
    masked_fill also keeps the backward pass free of NaN.
    """
    dead = torch.isneginf(logp)
    return logp.exp() * other.masked_fill(dead, 0.0)


def logprobs_from_logits(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Log-probability of ``tokens`` under ``softmax(logits / temperature)``.

    Shapes: ``logits`` ``(b, t, v)`` (any float dtype), ``tokens`` ``(b, t)`` long with values in
    ``[0, v)`` (callers replace padding ids by any valid id and mask the result) -> ``(b, t)`` float32.

    Formula: ``log_softmax(z)[tok] = z[tok] - logsumexp(z)`` with ``z = float32(logits) / temperature``.
    Memory: only the float32 cast of the logits is materialised (no full log_softmax copy): the chosen
    logit is gathered and the per-position logsumexp subtracted.

    Detaches nothing: gradients flow to ``logits``.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)} do not match")
    z = _scaled_float(logits, temperature)
    chosen = torch.gather(z, -1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(z, dim=-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` at each position.

    Shapes: ``logits`` ``(b, t, v)`` -> ``(b, t)`` float32.

    Formula: ``H = -sum_v p_v log p_v`` with ``log p = log_softmax(float32(logits) / temperature)``;
    tokens with ``p_v = 0`` (``-inf`` logits) contribute 0.

    Detaches nothing: gradients flow to ``logits`` (usable as an entropy bonus).
    """
    logp = torch.log_softmax(_scaled_float(logits, temperature), dim=-1)
    return -_safe_plogp_terms(logp, logp).sum(dim=-1)


def full_kl_from_logits(
    logits: torch.Tensor, ref_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Exact ``KL(pi || pi_ref)`` over the whole vocabulary at each position.

    Shapes: ``logits`` ``(b, t, v)``, ``ref_logits`` ``(b, t, v)`` -> ``(b, t)`` float32.

    Formula: ``KL = sum_v exp(logp_v) * (logp_v - logq_v)`` with ``logp = log_softmax(logits / T)`` and
    ``logq = log_softmax(ref_logits / T)`` in float32 (log space, numerically stable). Positions where
    ``pi`` puts zero mass contribute 0; where ``pi > 0`` but ``pi_ref = 0`` the KL is ``+inf``. This is the
    "KL as a loss term" form (exact, low-variance), as opposed to the sampled estimators in ``rlaif.ops.kl``.

    Detaches ``ref_logits``: gradient flows to ``logits`` only.
    """
    if logits.shape != ref_logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and ref_logits {tuple(ref_logits.shape)} differ")
    logp = torch.log_softmax(_scaled_float(logits, temperature), dim=-1)
    logq = torch.log_softmax(_scaled_float(ref_logits.detach(), temperature), dim=-1)
    return _safe_plogp_terms(logp, logp - logq).sum(dim=-1)
