"""Forward passes over prompt+response: per-token log-probs, entropies and values for response positions.

The logit at position p-1+t predicts response token t, so response token 0 is scored by the last prompt
position (the seed's off-by-one never trained it). Positions are counted over real tokens only.
"""

from __future__ import annotations

import torch

from .. import ops


def _joined(prompt_ids, prompt_mask, response_ids, response_mask):
    """(b, p), (b, r) -> input ids, attention mask and position ids of shape (b, p + r)."""
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    attn = torch.cat([prompt_mask.long(), response_mask.long()], dim=1)
    pos = (attn.cumsum(dim=1) - 1).clamp(min=0)
    return ids, attn, pos


def policy_logits(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """Logits that predict each response token: (b, r, v). Only response positions are materialised."""
    ids, attn, pos = _joined(prompt_ids, prompt_mask, response_ids, response_mask)
    r = response_ids.shape[1]
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=r + 1, use_cache=False)
    return out.logits[:, :-1, :]  # (b, r, v): position p-1+t predicts response token t


def response_logprobs(
    model, prompt_ids, prompt_mask, response_ids, response_mask, temperature: float, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(logprobs (b, r), entropy (b, r) or None, logits (b, r, v)) of the sampled response tokens."""
    logits = policy_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
    lp = ops.logprobs_from_logits(logits, response_ids, temperature)
    ent = ops.entropy_from_logits(logits.detach(), temperature) if with_entropy else None
    return lp, ent, logits


def response_logprobs_and_values(
    model, head: torch.nn.Module, prompt_ids, prompt_mask, response_ids, response_mask, temperature: float,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One forward pass of a policy whose critic shares its backbone: (logprobs (b, r), entropy (b, r) or None,
    logits (b, r, v), values (b, r)).

    The values read the hidden states the policy's output layer reads (captured on their way into it), at the
    positions whose logits predict each response token: V(s_t) from position p-1+t, as `response_values`.
    """
    captured: list[torch.Tensor] = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        lp, ent, logits = response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask,
                                            temperature, with_entropy)
    finally:
        hook.remove()
    hidden = captured[-1][:, -(response_ids.shape[1] + 1):-1]  # the logits_to_keep = r + 1 positions, minus the last
    values = head(hidden.to(head.weight.dtype)).squeeze(-1).float()
    return lp, ent, logits, values


def response_values(value_model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """Per-token values (b, r) from an `AutoModelForSequenceClassification` critic.

    V(s_t) is read at position p-1+t (the state before emitting response token t), through the model's
    scalar head (`score`) applied at every position of its backbone.
    """
    ids, attn, pos = _joined(prompt_ids, prompt_mask, response_ids, response_mask)
    backbone = getattr(value_model, value_model.base_model_prefix)
    hidden = backbone(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    p, r = prompt_ids.shape[1], response_ids.shape[1]
    head = value_head(value_model)
    return head(hidden[:, p - 1 : p + r - 1]).squeeze(-1).float()


def value_head(value_model) -> torch.nn.Module:
    head = getattr(value_model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(
            f"{type(value_model).__name__} has no per-token scalar head (`score`); a critic must be a decoder "
            "sequence classifier (initialise it from the policy: ppo.value_init=policy)"
        )
    return head
