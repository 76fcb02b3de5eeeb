"""A local causal LM as the judge: one forward pass per judgement, read at the next-token distribution.

Pairwise: P(first better) = p(label_1) / (p(label_1) + p(label_2)) for the template's two labels ("A", "B"),
each label's probability summed over its bare and space-prefixed tokens. Pointwise: the answer's expected
score under the next-token distribution over the scale labels ("1".."10", renormalised), mapped to [0, 1];
P(first better) = sigmoid(pointwise_k · (s_first − s_second)). A pointwise judge scores each answer alone, so it
is position-consistent by construction. A scale label whose first token is shared with an earlier label (e.g.
"10" = "1" + "0" in digit-splitting tokenizers) cannot be read from one token and is left out of the scale; the
metadata lists the labels used. With chain_of_thought, each judgement first generates a rationale (greedy, at
most max_cot_tokens), which becomes the assistant's turn before a user turn asking for the label alone; the label
probabilities are then read after that turn as above.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..models.loading import load_causal_lm, load_tokenizer
from ..rollout.generate import eos_token_ids
from .base import Generated, JudgeCall
from .templates import JudgeTemplate, cot_messages, render, verdict_messages


def _label_token_ids(tokenizer, label: str) -> list[int]:
    """The first token of `label` and of ` label` (deduplicated)."""
    ids = []
    for text in (label, " " + label):
        enc = tokenizer.encode(text, add_special_tokens=False)
        if enc and enc[0] not in ids:
            ids.append(enc[0])
    return ids


class LocalHFJudge:
    def __init__(self, model: str, template: JudgeTemplate, *, device: torch.device | str = "cpu",
                 batch_size: int = 8, max_length: int = 2048, pointwise_k: float = 10.0,
                 min_label_mass: float = 0.05, autocast=None, chain_of_thought: bool = False,
                 max_cot_tokens: int = 256):
        self.model_arg, self.template = model, template
        self.chain_of_thought, self.max_cot_tokens = chain_of_thought, max_cot_tokens
        self.tokenizer = load_tokenizer(model, padding_side="left")
        self.model = load_causal_lm(model, device=device).eval().requires_grad_(False)
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        self.pointwise_k, self.min_label_mass, self.autocast = pointwise_k, min_label_mass, autocast
        self.id = f"local:{model}:{template.mode}" + ("+cot" if chain_of_thought else "")
        self.labels: list[str] = []
        self.label_ids: list[list[int]] = []
        seen: set[int] = set()
        for label in template.labels:
            ids = [i for i in _label_token_ids(self.tokenizer, label) if i not in seen]
            if template.mode == "pairwise" and not ids:
                raise ValueError(f"judge template labels {template.labels} share their first token")
            if ids:
                seen.update(ids)
                self.labels.append(label)
                self.label_ids.append(ids)
        self._score_cache: dict[tuple[str, str, str | None], tuple[float, str, int, float, bool]] = {}

    def metadata(self) -> dict[str, Any]:
        meta = {"judge": self.id, "backend": "local", "model": self.model_arg, "mode": self.template.mode,
                "template": self.template.name, "template_sha256": self.template.sha256}
        if self.template.mode == "pointwise":
            meta.update(scale_labels_used=self.labels, pointwise_k=self.pointwise_k)
        if self.chain_of_thought:
            meta.update(chain_of_thought=True, max_cot_tokens=self.max_cot_tokens)
        return meta

    def _encode(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            ids = tok(text + "<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        return ids[-self.max_length:]

    def _left_padded(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(x) for x in seqs)
        ids = torch.full((len(seqs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, x in enumerate(seqs):
            ids[i, width - len(x):] = torch.tensor(x)
            mask[i, width - len(x):] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def _rationales(self, conversations: list[list[dict[str, str]]]) -> list[tuple[str, int, float]]:
        """Chain of thought, step 1: per conversation (greedy rationale, tokens read and written, latency)."""
        return [(g.text or "", g.tokens, g.latency_s) for g in self.generate(conversations, self.max_cot_tokens)]

    @torch.no_grad()
    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int
                 ) -> list[Generated]:
        """Greedy replies to chat conversations (text, tokens read and written, latency share). Also what a critic
        writes (`rlaif critique`)."""
        out = []
        eos = eos_token_ids(self.tokenizer, self.model)
        for s in range(0, len(conversations), self.batch_size):
            t0 = time.perf_counter()
            seqs = [self._encode(m) for m in conversations[s:s + self.batch_size]]
            ids, mask = self._left_padded(seqs)
            ctx = self.autocast() if self.autocast is not None else torch.autocast("cpu", enabled=False)
            with ctx:
                gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                          do_sample=False, temperature=None, top_p=None, top_k=None,
                                          pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos)
            new = gen[:, ids.shape[1]:].cpu()
            share = (time.perf_counter() - t0) / len(seqs)
            for i, x in enumerate(seqs):
                row = new[i].tolist()
                n_new = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
                text = self.tokenizer.decode(row[:n_new], skip_special_tokens=True).strip()
                out.append(Generated(text, len(x) + n_new, share))
        return out

    def _with_rationales(self, convs: list[list[dict[str, str]]]) -> tuple[list[list[dict[str, str]]],
                                                                         list[tuple[str, int, float]]]:
        """Chain of thought: the verdict conversations and each rationale's (text, tokens, latency)."""
        if not self.chain_of_thought:
            return convs, [("", 0, 0.0)] * len(convs)
        rats = self._rationales([cot_messages(self.template, m) for m in convs])
        return [verdict_messages(self.template, m, r[0]) for m, r in zip(convs, rats)], rats

    @torch.no_grad()
    def _label_probs(self, conversations: list[list[dict[str, str]]]) -> list[tuple[list[float], str, int, float]]:
        """Per conversation: (probability of each label, top token text, prompt tokens, latency share)."""
        out = []
        for s in range(0, len(conversations), self.batch_size):
            t0 = time.perf_counter()
            seqs = [self._encode(m) for m in conversations[s:s + self.batch_size]]
            ids, mask = self._left_padded(seqs)
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            ctx = self.autocast() if self.autocast is not None else torch.autocast("cpu", enabled=False)
            with ctx:
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1, :]
            probs = torch.softmax(logits.float(), dim=-1).cpu()
            share = (time.perf_counter() - t0) / len(seqs)
            for i, x in enumerate(seqs):
                p = [float(probs[i, tids].sum()) for tids in self.label_ids]
                top = self.tokenizer.decode([int(probs[i].argmax())])
                out.append((p, top, len(x) + 1, share))
        return out

    def _pairwise(self, prompts, firsts, seconds, references) -> list[JudgeCall]:
        convs = [render(self.template, q, first=f, second=s, reference=r)
                 for q, f, s, r in zip(prompts, firsts, seconds, references)]
        convs, rats = self._with_rationales(convs)
        calls = []
        for ((p1, p2), top, n_tok, dt), (rat, r_tok, r_dt) in zip(self._label_probs(convs), rats):
            mass = p1 + p2
            failed = mass < self.min_label_mass
            raw = f"{rat}\n=> {top}" if self.chain_of_thought else top
            calls.append(JudgeCall(0.5 if failed else p1 / mass, raw, n_tok + r_tok, dt + r_dt, failed,
                                   label_mass=mass))
        return calls

    def _scores(self, prompts, responses, references) -> list[tuple[float, str, int, float, bool, float]]:
        """(score in [0, 1], top token, tokens, latency, parse_failed, label mass) per answer, cached across
        orders."""
        keys = [(q, a, r) for q, a, r in zip(prompts, responses, references)]
        todo = list(dict.fromkeys(k for k in keys if k not in self._score_cache))
        convs, rats = self._with_rationales([render(self.template, q, response=a, reference=r) for q, a, r in todo])
        values = torch.tensor([float(x) for x in self.labels]) if all(
            _is_number(x) for x in self.labels) else torch.arange(1, len(self.labels) + 1, dtype=torch.float)
        lo, hi = float(values.min()), float(values.max())
        for key, (p, top, n_tok, dt), (rat, r_tok, r_dt) in zip(todo, self._label_probs(convs), rats):
            pt = torch.tensor(p)
            mass = float(pt.sum())
            failed = mass < self.min_label_mass
            expected = float((pt / mass * values).sum()) if not failed else 0.5 * (lo + hi)
            raw = f"{rat}\n=> {top}" if self.chain_of_thought else top
            self._score_cache[key] = ((expected - lo) / (hi - lo), raw, n_tok + r_tok, dt + r_dt, failed, mass)
        return [self._score_cache[k] for k in keys]

    def score(self, prompts: Sequence[str], responses: Sequence[str],
              references: Sequence[str | None] | None = None) -> list[float]:
        """Pointwise scores in [0, 1] (pointwise templates only)."""
        refs = list(references) if references is not None else [None] * len(prompts)
        return [s[0] for s in self._scores(prompts, responses, refs)]

    def prob_first_better(self, prompts: Sequence[str], firsts: Sequence[str], seconds: Sequence[str],
                          references: Sequence[str | None] | None = None) -> list[JudgeCall]:
        refs = list(references) if references is not None else [None] * len(prompts)
        if self.template.mode == "pairwise":
            return self._pairwise(prompts, firsts, seconds, refs)
        sf = self._scores(prompts, firsts, refs)
        ss = self._scores(prompts, seconds, refs)
        calls = []
        for f, s in zip(sf, ss):
            prob = 1.0 / (1.0 + math.exp(-self.pointwise_k * (f[0] - s[0])))
            calls.append(JudgeCall(prob, f"{f[1]}|{s[1]}", f[2] + s[2], f[3] + s[3], f[4] or s[4],
                                   label_mass=min(f[5], s[5])))
        return calls


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


__all__ = ["LocalHFJudge"]
