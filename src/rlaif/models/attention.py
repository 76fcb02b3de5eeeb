"""Scaled-dot-product attention computed in fp32 on the CPU under bf16 autocast.

Why: bf16 autocast puts `scaled_dot_product_attention` in bf16, and torch's CPU bf16 attention kernel is
several times slower than its fp32 one at the shapes rlaif runs (torch 2.13, AVX512-BF16 CPU: 0.35 ms vs
0.07 ms per decode step and layer for 8 rows; 14.6 vs 9.0 ms forward + backward for 4 x 150 tokens). The
linear layers, where bf16 pays, stay in bf16. fp32 attention is also the more accurate of the two.

What: `ATTENTION` is registered with transformers' `AttentionInterface` (and its mask with
`AttentionMaskInterface`, the SDPA one). On the CPU with autocast on, or with low-precision inputs, it runs
transformers' own SDPA forward on fp32 copies of q, k, v with autocast off, and returns the output in v's dtype
(what autocast would have produced). Anywhere else (GPU, fp32 runs) it is transformers' SDPA forward itself, so
the results are identical (bit for bit) to `attn_implementation="sdpa"`.
`use_fp32_cpu_attention(model)` switches a loaded SDPA model to it; the choice lives in the in-memory config
only (`save_pretrained` does not write it), so saved models load anywhere.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

ATTENTION = "rlaif_sdpa_fp32_on_cpu"  # contains "sdpa": transformers runs its SDPA dispatch checks on it


def sdpa_fp32_on_cpu(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' attention-function signature: query (b, h, q, d), key / value (b, h_kv, k, d), mask as
    the SDPA mask function builds it -> ((b, q, h, d) output, None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    low_precision = query.dtype != torch.float32 or value.dtype != torch.float32
    if query.device.type != "cpu" or not (torch.is_autocast_enabled("cpu") or low_precision):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(value.dtype), weights


def register() -> None:
    """Make `ATTENTION` a valid `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, sdpa_fp32_on_cpu)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def use_fp32_cpu_attention(model) -> bool:
    """Switch a model that runs transformers' SDPA to `ATTENTION`; anything else is left as it is.

    Returns whether the model now uses it. Models outside transformers' attention interface (e.g. DeBERTa)
    and models on eager / flash / flex attention are not touched.
    """
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if not (hasattr(model, "set_attn_implementation") and model._can_set_attn_implementation()):
        return False
    register()
    try:
        model.set_attn_implementation(ATTENTION)
    except (ValueError, ImportError) as e:  # the model's SDPA dispatch check refused it
        log.debug("%s: keeping sdpa (%s)", type(model).__name__, e)
        return False
    return model.config._attn_implementation == ATTENTION
