"""A reference-guided embedding judge: an offline stand-in for a real judge, not a judge of quality.

Sentence embeddings as sentence-transformers' all-MiniLM-L6-v2 computes them (mean of the last hidden state over
real tokens, then L2 normalisation), with plain `transformers.AutoModel`. With a reference answer:

    P(first better) = sigmoid(k · (cos(first, ref) − cos(second, ref)) + k2 · (cos(first, q) − cos(second, q)))

(the question relevance term breaks near-ties). Without a reference: sigmoid(k · (cos(first, q) − cos(second, q))).
It is symmetric, so exactly position-consistent; it rewards closeness to the reference, not correctness.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..models.loading import resolve_model
from .base import JudgeCall


class EmbeddingJudge:
    def __init__(self, model: str = "minilm-l6", *, k: float = 20.0, k2: float = 5.0,
                 device: torch.device | str = "cpu", batch_size: int = 32, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model(model)
        self.model_arg, self.k, self.k2 = model, k, k2
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval().requires_grad_(False)
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self.id = f"embedding:{model}"

    def metadata(self) -> dict[str, Any]:
        return {"judge": self.id, "backend": "embedding", "model": self.model_arg, "k": self.k, "k2": self.k2,
                "offline_stand_in": True,
                "note": "similarity to the reference answer (and the question), not a judgement of quality"}

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, d) mean-pooled, L2-normalised embeddings."""
        out = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[s:s + self.batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state  # (b, t, d)
            m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    def prob_first_better(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
                          references: Sequence[str | None] | None = None) -> list[JudgeCall]:
        n = len(prompts)
        if n == 0:
            return []
        t0 = time.perf_counter()
        refs = list(references) if references is not None else [None] * n
        texts = list(dict.fromkeys([*prompts, *firsts, *seconds, *(r for r in refs if r)]))
        index = {t: i for i, t in enumerate(texts)}
        emb = self.embed(texts)
        n_tok = [len(self.tokenizer(t, truncation=True, max_length=self.max_length)["input_ids"]) for t in texts]

        def cos(x: str, y: str) -> float:
            return float(emb[index[x]] @ emb[index[y]])

        share = (time.perf_counter() - t0) / n
        calls = []
        for q, f, s, r in zip(prompts, firsts, seconds, refs):
            rel = cos(f, q) - cos(s, q)
            z = self.k * (cos(f, r) - cos(s, r)) + self.k2 * rel if r else self.k * rel
            tokens = n_tok[index[q]] + n_tok[index[f]] + n_tok[index[s]] + (n_tok[index[r]] if r else 0)
            calls.append(JudgeCall(1.0 / (1.0 + math.exp(-z)), None, tokens, share, False))
        return calls


__all__ = ["EmbeddingJudge"]
