"""Fixtures for the stage tests: a tiny random Llama that sometimes ends its answers with EOS."""

from __future__ import annotations

import pytest
import torch

# Weight of the EOS row on the constant residual direction: with temperature 0.7 and 8 new tokens this gives
# a mix of rollouts that end with EOS (at various lengths) and rollouts that run out of budget.
EOS_LOGIT_SCALE = 1.6


def build_eos_model(tokenizer_dir: str, out_dir) -> str:
    """A 2-layer random Llama (untied head) whose EOS logit is lifted through a constant embedding dimension."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1234)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[tok.eos_token_id, 0] = EOS_LOGIT_SCALE
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def eos_model_dir(tmp_path_factory, tiny_model_dir) -> str:
    return build_eos_model(tiny_model_dir, tmp_path_factory.mktemp("tiny-eos-llama"))
