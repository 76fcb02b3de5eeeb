"""models.attention: rlaif's loaders switch SDPA models to attention computed in fp32 under CPU autocast;
outside autocast it is transformers' SDPA bit for bit, and it never reaches a saved config."""

from __future__ import annotations

import json

import torch

from rlaif.models.attention import ATTENTION, sdpa_fp32_on_cpu
from rlaif.models.loading import load_causal_lm, load_sequence_classifier


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, 5, 8, generator=g)  # (b, heads, q, d)
    k = torch.randn(2, 2, 5, 8, generator=g)  # (b, kv heads, k, d)
    v = torch.randn(2, 2, 5, 8, generator=g)
    return q, k, v


class _Module(torch.nn.Module):  # what transformers' SDPA forward reads from an attention layer
    num_key_value_groups = 2
    is_causal = True


def test_loaders_switch_sdpa_models(tiny_model_dir):
    assert load_causal_lm(tiny_model_dir).config._attn_implementation == ATTENTION
    assert load_sequence_classifier(tiny_model_dir).config._attn_implementation == ATTENTION


def test_fp32_logits_equal_plain_sdpa_bit_for_bit(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir).eval()
    ids = torch.randint(0, 1000, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding: the mask path, not just is_causal
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask).logits
        model.set_attn_implementation("sdpa")
        plain = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(ours, plain)


def test_under_cpu_bf16_autocast_attention_is_computed_in_fp32():
    """Inside autocast, with q and k fp32 and v bf16 (as a Llama layer hands them over: rotary embeddings
    leave q and k in fp32): the output equals transformers' SDPA on fp32 copies with autocast off (exactly), in
    v's dtype; gradients reach q, k, v."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = _Module()
    q, k, v = _inputs()
    v = v.to(torch.bfloat16)
    want, _ = sdpa_attention_forward(module, q, k, v.float(), None)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = sdpa_fp32_on_cpu(module, *leaves, None)
        bf16, _ = sdpa_attention_forward(module, q, k, v, None)
    assert got.dtype == torch.bfloat16 and bf16.dtype == torch.bfloat16
    assert torch.equal(got, want.to(torch.bfloat16))
    assert not torch.equal(got, bf16)  # what plain SDPA computes under autocast (in bf16) differs
    got.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)


def test_saved_config_does_not_name_it(tiny_model_dir, tmp_path):
    load_causal_lm(tiny_model_dir).save_pretrained(tmp_path)
    assert "rlaif" not in json.dumps(json.loads((tmp_path / "config.json").read_text()))
