"""Reward sources: a reward model, a Python callable `f(prompts, responses) -> list[float]`, or a judge
(rewards/judge_reward.py).

Every source sees the real question (the user turn; a multi-turn prompt: the whole conversation so far as a
transcript, `history_text`) and the real answer (decoded up to the first
EOS, special tokens removed). The seed's reference implementation handed its reward model an empty
question whenever pad == EOS; here the texts are passed explicitly, never recovered from padded ids.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch

from ..models.loading import is_decoder_only, load_sequence_classifier, load_tokenizer


class RewardSource(Protocol):
    name: str

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], rows=None) -> torch.Tensor:
        """(b,) float32 scores on CPU. `rows`: the rollout's PromptRows (ids, reference answers), for sources
        that need more than the texts (a judge); the others ignore it."""
        ...


def load_callable(spec: str) -> Callable:
    """`package.module:function` or `path/to/file.py:function` -> the function."""
    if ":" not in spec:
        raise ValueError(f"reward function '{spec}' must look like 'module:function' or 'file.py:function'")
    mod_name, func_name = spec.rsplit(":", 1)
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise ValueError(f"reward function '{spec}': file '{path}' does not exist")
        mspec = importlib.util.spec_from_file_location(path.stem, path)
        assert mspec is not None and mspec.loader is not None
        module = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(module)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise ValueError(f"reward function '{spec}': cannot import module '{mod_name}': {e}") from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise ValueError(f"reward function '{spec}': '{func_name}' is not a function in '{mod_name}'")
    return fn


class CallableReward:
    """Verifiable rewards: any `f(prompts, responses) -> list[float]`."""

    def __init__(self, spec: str):
        self.name = spec
        self.fn = load_callable(spec)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], rows=None) -> torch.Tensor:
        out = self.fn(list(prompts), list(responses))
        scores = [float(x) for x in out]
        if len(scores) != len(responses):
            raise ValueError(f"reward function {self.name} returned {len(scores)} scores for {len(responses)} responses")
        return torch.tensor(scores, dtype=torch.float32)


def encode_reward_inputs(tokenizer, fmt: str, prompts: Sequence[str], responses: Sequence[str],
                         max_length: int) -> dict[str, torch.Tensor]:
    """The exact inputs a reward model sees, shared by `rlaif rm` (training) and `ModelReward` (PPO scoring).

    fmt "pair" (encoder RMs): (question, answer) as a text pair, `longest_first` truncation to max_length.
    fmt "chat" (decoder RMs): the user/assistant transcript in the tokenizer's chat template (ChatML
    fallback), truncated on the left so the answer and its end-of-turn survive. Padding follows the
    tokenizer's padding side (right for `ModelReward`: a decoder head reads the last non-pad token).
    """
    tok = tokenizer
    if fmt == "pair":
        return tok(list(prompts), list(responses), padding=True, truncation="longest_first",
                   max_length=max_length, return_tensors="pt")
    texts = []
    for q, a in zip(prompts, responses):
        chat = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        if getattr(tok, "chat_template", None):
            texts.append(tok.apply_chat_template(chat, tokenize=False))
        else:
            texts.append(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n")
    tok.truncation_side = "left"
    return tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt",
               add_special_tokens=False)


class ModelReward:
    """A frozen `AutoModelForSequenceClassification` reward model.

    Decoder RMs (e.g. SmolLM2 with a scalar head) see the conversation in their own chat template and are
    read at the last real token; encoder RMs (BERT, MiniLM, DeBERTa) take (question, answer) as a text pair.
    A bias recorded by `rlaif rm` (`config.rlaif_reward_bias`) is subtracted.
    """

    def __init__(self, model_arg: str, device: torch.device | str = "cpu", batch_size: int = 16,
                 max_length: int = 512, input_format: str = "auto", autocast=None):
        self.name = model_arg
        self.tokenizer = load_tokenizer(model_arg, padding_side="right")
        self.model = load_sequence_classifier(model_arg, device=device, pad_token_id=self.tokenizer.pad_token_id)
        self.model.eval().requires_grad_(False)
        limit = getattr(self.model.config, "max_position_embeddings", None)  # encoders: 512 positions
        if limit and max_length > limit:
            max_length = int(limit)  # a longer input would index past the position table
        self.device, self.batch_size, self.max_length, self.autocast = device, batch_size, max_length, autocast
        decoder = is_decoder_only(self.model.config)
        self.format = input_format if input_format != "auto" else ("chat" if decoder else "pair")
        self.bias = float(getattr(self.model.config, "rlaif_reward_bias", 0.0) or 0.0)

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        return encode_reward_inputs(self.tokenizer, self.format, prompts, responses, self.max_length)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str], rows=None) -> torch.Tensor:
        out = []
        for s in range(0, len(prompts), self.batch_size):
            enc = self.encode(prompts[s:s + self.batch_size], responses[s:s + self.batch_size])
            enc = {k: v.to(self.device) for k, v in enc.items()}
            ctx = self.autocast if self.autocast is not None else torch.autocast("cpu", enabled=False)
            with ctx:
                logits = self.model(**enc).logits
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out) - self.bias


class EnsembleReward:
    """Several reward sources combined by mean, min or mean - k*std; `last_std` holds the disagreement."""

    def __init__(self, sources: list[RewardSource], combine: str = "mean", k: float = 1.0):
        if combine not in ("mean", "min", "mean_minus_std"):
            raise ValueError(f"unknown ensemble combine '{combine}' (mean | min | mean_minus_std)")
        self.sources, self.combine, self.k = sources, combine, k
        self.name = f"ensemble[{combine}]({', '.join(s.name for s in sources)})"
        self.last_std: torch.Tensor | None = None

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], rows=None) -> torch.Tensor:
        scores = torch.stack([s(prompts, responses, rows=rows) for s in self.sources])  # (m, b)
        std = scores.std(dim=0, unbiased=True) if len(self.sources) > 1 else torch.zeros(scores.shape[1])
        self.last_std = std
        if self.combine == "min":
            return scores.min(dim=0).values
        mean = scores.mean(dim=0)
        return mean - self.k * std if self.combine == "mean_minus_std" else mean


def make_reward_source(models: list[str], function: str | None, *, device, batch_size: int, max_length: int,
                       input_format: str, combine: str, std_k: float, autocast=None,
                       extra: Sequence[RewardSource] = ()) -> RewardSource:
    """Reward models, a callable and `extra` sources (e.g. a judge); several make an ensemble."""
    sources: list[RewardSource] = [
        ModelReward(m, device=device, batch_size=batch_size, max_length=max_length, input_format=input_format,
                    autocast=autocast)
        for m in models
    ]
    if function:
        sources.append(CallableReward(function))
    sources.extend(extra)
    if not sources:
        raise ValueError("no reward source: set ppo.reward.model (one or more), ppo.reward.function or "
                         "ppo.reward.judge_mode")
    if len(sources) == 1:
        return sources[0]
    return EnsembleReward(sources, combine=combine, k=std_k)


def check_finite(scores: torch.Tensor, name: str) -> torch.Tensor:
    bad = ~torch.isfinite(scores)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()[:5]
        raise FloatingPointError(f"reward source {name} returned non-finite scores at rows {idx}")
    return scores



