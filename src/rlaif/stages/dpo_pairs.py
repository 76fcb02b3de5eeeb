"""DPO's data: preference pairs tokenised with the SFT chat formatting, their summed answer log-probabilities, and the
reference log-probabilities computed once and cached in the run folder."""

from __future__ import annotations

import hashlib
import logging
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed, ops
from ..checkpoint import torch_load
from ..data.preference_split import PreferenceSplit, read_preference_split
from ..data.preferences import PreferenceRow
from ..data.sft import Encoded, SFTRow, collate, encode_row, end_of_turn_ids
from ..models.loading import weights_fingerprint
from .dpo_config import DPOConfig

log = logging.getLogger("rlaif.dpo")


@dataclass(frozen=True)
class EncodedPair:
    chosen: Encoded
    rejected: Encoded
    smoothing: float  # per-pair label smoothing e: the loss targets P(chosen better) = 1 - e


DPOData = PreferenceSplit


def read_data(cfg: DPOConfig, seed: int) -> PreferenceSplit:
    """Read, validate and split every input file; bad rows fail here, before anything is written."""
    cfg.validate()
    return read_preference_split("dpo", cfg.data, cfg.eval_data, cfg.eval_fraction, seed, cfg.use_soft_labels, "use_soft_labels",
                                 cfg.human_labels)


def pair_smoothing(row: PreferenceRow, cfg: DPOConfig) -> float:
    """e = 1 - target, target = p (1 - s) + (1 - p) s: the soft label p (1 for hard rows) smoothed by s."""
    p = row.label_prob if cfg.use_soft_labels and row.label_prob is not None else 1.0
    return 1.0 - (p * (1.0 - cfg.label_smoothing) + (1.0 - p) * cfg.label_smoothing)


def encode_pairs(tokenizer, rows: list[PreferenceRow], cfg: DPOConfig) -> list[EncodedPair]:
    """Prompt + answer ids with the SFT chat formatting (labels = answer tokens and their end-of-turn token)."""
    end_ids = end_of_turn_ids(tokenizer)

    def enc(row: PreferenceRow, answer: str) -> Encoded:
        return encode_row(tokenizer, SFTRow(row.id, row.turns, answer, row.where), cfg.max_length, end_ids)

    return [EncodedPair(enc(r, r.chosen), enc(r, r.rejected), pair_smoothing(r, cfg)) for r in rows]


def policy_logps(model, pairs: list[EncodedPair], pad_id: int, device, amp) -> tuple[torch.Tensor, torch.Tensor]:
    """(b,) chosen and (b,) rejected summed answer log-probabilities; the 2b sequences share one forward pass."""
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    batch = {k: v.to(device) for k, v in collate(seqs, pad_id).items()}
    with amp():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logps = ops.sequence_logprobs(logits, batch["labels"])  # (2b,) float32
    return logps[:len(pairs)], logps[len(pairs):]


@torch.no_grad()
def score_all(model, pairs: list[EncodedPair], batch_size: int, pad_id: int, device, amp
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(n,) chosen and (n,) rejected log-probabilities of every pair, without gradients, on the CPU (with N
    processes each scores every N-th pair and every process gets all n)."""
    model.eval()
    chosen, rejected = [torch.zeros(0)], [torch.zeros(0)]
    mine = distributed.my_items(pairs)
    for part, weight in distributed.lockstep_chunks(mine, batch_size, pairs[0] if pairs else None, model):
        c, r = policy_logps(model, part, pad_id, device, amp)
        if weight:
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    distributed.reshard(model)
    return (distributed.gather_items(torch.cat(chosen), len(pairs)),
            distributed.gather_items(torch.cat(rejected), len(pairs)))


def cache_key(reference: str, pairs: dict[str, list[EncodedPair]], device, precision: str) -> str:
    """What the cached reference log-probabilities depend on: the reference's weights (a fingerprint of its
    files, not its name: a model retrained in place must not reuse stale log-probabilities), the numerics and
    every token id."""
    h = hashlib.sha256(f"{weights_fingerprint(reference)}|{device.type}|{precision}".encode())
    for name, part in pairs.items():
        h.update(f"|{name}:{len(part)}".encode())
        for p in part:
            for e in (p.chosen, p.rejected):
                h.update(array("q", [e.prompt_len, len(e.ids), *e.ids]).tobytes())
    return h.hexdigest()


def load_reference_cache(path: Path, key: str) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    cached = torch_load(path)
    if cached.get("key") != key:
        log.warning("%s was computed for another reference, data or precision: recomputing it", path)
        return None
    return cached


def save_reference_cache(path: Path, cached: dict) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    torch.save(cached, tmp)
    os.replace(tmp, path)  # a run killed mid-write leaves no half cache
