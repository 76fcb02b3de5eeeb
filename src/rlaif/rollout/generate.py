"""Rollouts: encode prompts (left padding), sample responses (KV cache), mask up to the first EOS.

Shapes: b rollouts, p prompt tokens (left padded), r response tokens (right padded).
The response mask includes the first response token and the first EOS, and nothing after it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .. import distributed
from ..data.prompts import PromptRow, chat_prompt_ids
from ..ops.sampling import sample_tokens


@dataclass
class PromptBatch:
    ids: torch.Tensor  # (b, p) long, left padded
    mask: torch.Tensor  # (b, p) long, 1 on real tokens
    n_truncated: int  # prompts cut from the left to fit max_prompt_tokens


@dataclass
class Rollout:
    """One batch of sampled responses with everything the update needs to re-score them."""

    prompt_ids: torch.Tensor  # (b, p) long, left padded
    prompt_mask: torch.Tensor  # (b, p) long
    response_ids: torch.Tensor  # (b, r) long, pad after the first EOS
    response_mask: torch.Tensor  # (b, r) bool, True up to and including the first EOS
    ended_with_eos: torch.Tensor  # (b,) bool
    prompts: list[str]  # the question as a reward model / judge sees it (PromptRow.text: the conversation so far)
    responses: list[str]  # decoded response, special tokens removed
    logprobs: torch.Tensor | None = None  # (b, r) float32: log-probs of the sampled tokens, taken while sampling
    values: torch.Tensor | None = None  # (b, r) float32: a shared value head's V(s_t), taken while sampling

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def model_inputs(self, idx: torch.Tensor | list[int], device) -> list[torch.Tensor]:
        """(prompt_ids, prompt_mask, response_ids, response_mask) of rows `idx`, on `device`: the arguments of
        `rollout.scoring.response_logprobs` / `response_values`."""
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        return [t[idx_t].to(device) for t in (self.prompt_ids, self.prompt_mask, self.response_ids,
                                              self.response_mask)]

    def select(self, idx: torch.Tensor | list[int]) -> Rollout:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        il = idx_t.tolist()
        return Rollout(
            self.prompt_ids[idx_t], self.prompt_mask[idx_t], self.response_ids[idx_t],
            self.response_mask[idx_t], self.ended_with_eos[idx_t],
            [self.prompts[i] for i in il], [self.responses[i] for i in il],
            None if self.logprobs is None else self.logprobs[idx_t],
            None if self.values is None else self.values[idx_t],
        )


def encode_prompts(tokenizer, rows: list[PromptRow], max_prompt_tokens: int) -> PromptBatch:
    """Chat-format and left-pad prompts; prompts longer than `max_prompt_tokens` keep their last tokens."""
    seqs, n_trunc = [], 0
    for row in rows:
        ids = chat_prompt_ids(tokenizer, row)
        if len(ids) > max_prompt_tokens:
            ids, n_trunc = ids[-max_prompt_tokens:], n_trunc + 1
        seqs.append(ids)
    p = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), p), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), p), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, p - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, p - len(s):] = 1
    return PromptBatch(ids, mask, n_trunc)


def eos_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS plus the model's generation-config EOS ids."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, (list, tuple)):
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


def truncate_after_eos(
    response_ids: torch.Tensor, eos_ids: list[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(b, r) sampled ids -> (ids with pad after the first EOS, mask (b, r) bool, ended (b,) bool).

    Position t is valid iff no EOS occurs strictly before t: the first EOS itself is kept (it is an action
    the policy took and must be trained), everything after it is padding.
    """
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()  # EOS count strictly before t
    mask = eos_before == 0
    ids = torch.where(mask, response_ids, torch.full_like(response_ids, pad_id))
    return ids, mask, is_eos.any(dim=1)


class ScoresWhileSampling:
    """Hooks that take, during `generate`, what scoring would otherwise recompute with one more forward pass:
    the log-prob of each sampled token under softmax(raw logits / temperature) — the same op and convention as
    `rollout.scoring.response_logprobs` — and, with a shared value head, V(s_t) from the hidden state the output
    layer reads at step t.

    Per step: a forward hook on the output layer keeps that step's raw logits (b, v) (one step's, never all of
    them); a pre-hook on the input embeddings sees the token fed back at the next step, which is the token just
    sampled, and scores it. The last sampled token is scored from the last logits by `finish`.
    Result: (b, T) log-probs and (b, T) values (or None) for the T generated steps.
    """

    def __init__(self, model, temperature: float, value_head: torch.nn.Module | None = None):
        from .. import ops

        self._ops, self.temperature, self.head = ops, temperature, value_head
        self._last: torch.Tensor | None = None  # (b, 1, v) raw logits of the latest step
        self.logprobs: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        out_layer = model.get_output_embeddings()
        self._hooks = [
            out_layer.register_forward_hook(self._on_logits),
            model.get_input_embeddings().register_forward_pre_hook(self._on_input),
        ]
        if value_head is not None:
            self._hooks.append(out_layer.register_forward_pre_hook(self._on_hidden))

    def close(self) -> None:
        """Remove the hooks (idempotent; also after a failed `generate`)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _on_logits(self, _module, _args, output) -> None:
        self._last = output[:, -1:]

    def _on_hidden(self, _module, args) -> None:
        h = args[0][:, -1]
        self.values.append(self.head(h.to(self.head.weight.dtype)).squeeze(-1).float())

    def _on_input(self, _module, args) -> None:
        if self._last is not None:  # every call after the first: its last input id is the token sampled last
            self._score(args[0][:, -1:])

    def _score(self, tokens: torch.Tensor) -> None:
        self.logprobs.append(self._ops.logprobs_from_logits(self._last, tokens, self.temperature)[:, 0])
        self._last = None

    def finish(self, sequences: torch.Tensor, n_new: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`sequences` (b, p + n_new) as `generate` returned them -> ((b, n_new), (b, n_new) or None)."""
        self.close()
        if self._last is not None:
            self._score(sequences[:, -1:])
        if len(self.logprobs) != n_new or (self.head is not None and len(self.values) != n_new):
            raise RuntimeError(f"scores taken while sampling: {len(self.logprobs)} log-prob and {len(self.values)} "
                               f"value steps for {n_new} sampled tokens (a generate that skips the model's "
                               "embedding or output layer?); recompute them instead")
        lp = torch.stack(self.logprobs, dim=1).float()
        return lp, (torch.stack(self.values, dim=1) if self.head is not None else None)


class DrawByInverseCdf(LogitsProcessor):
    """Draws the next token itself, from softmax(scores / temperature) with `ops.sample_tokens` (one uniform per
    row, where `generate`'s `torch.multinomial` draws b x vocab exponentials), and returns scores that are 0 at
    the drawn token and -inf elsewhere, so `generate(do_sample=False)`'s argmax picks the draw.

    It runs after `generate`'s own processors (min_new_tokens' EOS ban included), as its sampling would.
    Shapes: input_ids (b, t), scores (b, v) -> (b, v).
    """

    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        drawn = sample_tokens(scores, self.temperature)
        return torch.full_like(scores, float("-inf")).scatter_(1, drawn.unsqueeze(1), 0.0)


# Logits processors that `generate` takes from a model's own generation_config (hub instruct models often ship
# some, e.g. repetition_penalty) on top of ours. Each changes the distribution tokens are drawn from, while
# scoring -- PPO's old log-probs, GRPO's, eval's sampled KL -- reads softmax(logits / T): with them the sampled
# policy would not be the trained one (off-policy, silently). Every rollout passes these "off" values instead.
_NEUTRAL = {
    "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "sequence_bias": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None, "typical_p": 1.0,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None, "top_h": None, "exponential_decay_length_penalty": None,
    "renormalize_logits": False, "min_length": 0, "num_beams": 1, "guidance_scale": None, "watermarking_config": None,
}
_warned: set[int] = set()


def neutral_generation_kwargs(model) -> dict:
    """`generate` keyword arguments that switch off every distribution-changing setting of the model's own
    generation_config (the keys this transformers version knows); warns once per model about those it had."""
    from transformers import GenerationConfig

    known = GenerationConfig()
    out = {k: v for k, v in _NEUTRAL.items() if hasattr(known, k)}
    own = getattr(model, "generation_config", None)
    overridden = sorted(k for k, v in out.items() if own is not None and getattr(own, k, None) not in (None, v, []))
    if overridden and id(model) not in _warned:
        _warned.add(id(model))
        import logging

        logging.getLogger("rlaif.rollout").warning(
            "the model's generation_config sets %s: ignored, so that answers are sampled from softmax(logits / "
            "temperature), the distribution rlaif scores and trains", ", ".join(f"{k}={getattr(own, k)!r}"
                                                                              for k in overridden))
    return out


def sampling_kwargs(temperature: float, top_p: float) -> dict:
    """`generate` keyword arguments for pure sampling (temperature > 0, no top-p: `DrawByInverseCdf`), nucleus
    sampling (`generate`'s own, top_k off) or greedy decoding (temperature 0)."""
    if temperature <= 0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    if top_p >= 1.0:
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                "logits_processor": LogitsProcessorList([DrawByInverseCdf(temperature)])}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}


@torch.no_grad()
def sample_responses(
    model,
    tokenizer,
    rows: list[PromptRow],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    min_new_tokens: int = 1,
    max_prompt_tokens: int = 512,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    autocast: torch.autocast | None = None,
    keep_logprobs: bool = False,
    value_head: torch.nn.Module | None = None,
) -> tuple[Rollout, int]:
    """Sample one response per prompt with `model.generate` (KV cache, left padding, stop at EOS).

    Returns the rollout (padded to a common width) and the number of prompts truncated from the left.
    `keep_logprobs`: the rollout also carries the sampled tokens' log-probs (and, given a shared `value_head`,
    the values), taken while sampling (`ScoresWhileSampling`). An FSDP-sharded model is gathered whole for the
    sampling (`distributed.gathered_for_generation`) and sharded again after.
    """
    eos = eos_token_ids(tokenizer, model)
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    enc = encode_prompts(tokenizer, rows, max_prompt_tokens)
    chunks, lp_chunks, v_chunks = [], [], []
    for s in range(0, len(rows), batch_size):
        ids = enc.ids[s:s + batch_size]
        mask = enc.mask[s:s + batch_size]
        keep = mask.sum(0) > 0  # drop columns that are padding for the whole chunk
        ids, mask = ids[:, keep].to(device), mask[:, keep].to(device)
        ctx = autocast if autocast is not None else torch.autocast("cpu", enabled=False)
        scorer = ScoresWhileSampling(model, temperature, value_head) if keep_logprobs else None
        with ctx, distributed.gathered_for_generation(model), contextlib.ExitStack() as cleanup:
            if scorer is not None:
                cleanup.callback(scorer.close)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                **sampling_kwargs(temperature, top_p),
                **neutral_generation_kwargs(model),
                pad_token_id=pad,
                eos_token_id=eos,
                use_cache=True,
            )
        chunks.append(out[:, ids.shape[1]:].cpu())
        if scorer is not None:
            lp, v = scorer.finish(out, out.shape[1] - ids.shape[1])
            lp_chunks.append(lp.cpu())
            v_chunks.append(v.cpu() if v is not None else None)
    if was_training:
        model.train()
    r = max(c.shape[1] for c in chunks)

    def padded(parts: list[torch.Tensor], value) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(c, (0, r - c.shape[1]), value=value) for c in parts])

    resp = padded(chunks, pad)
    resp, rmask, ended = truncate_after_eos(resp, eos, pad)
    texts = tokenizer.batch_decode(torch.where(rmask, resp, pad), skip_special_tokens=True)
    rollout = Rollout(
        prompt_ids=enc.ids, prompt_mask=enc.mask, response_ids=resp, response_mask=rmask, ended_with_eos=ended,
        prompts=[row.text for row in rows], responses=[t.strip() for t in texts],
        logprobs=padded(lp_chunks, 0.0) if lp_chunks else None,
        values=padded(v_chunks, 0.0) if v_chunks and v_chunks[0] is not None else None,
    )
    return rollout, enc.n_truncated
