"""Direct Preference Optimization on the preference rows `rlaif label` writes (`rlaif dpo`): no reward model, no
sampling; the policy learns from (prompt, chosen, rejected) pairs against a frozen reference.

Before training: 1) read and split the pairs (bad rows fail before anything is written); 2) tokenise prompt +
answer with the SFT chat formatting, so only answer tokens (with their end-of-turn token) count; 3) the reference
log-probabilities of every answer, computed ONCE and cached in `output_dir/reference_logps.pt` (keyed by the
reference model and the exact token ids; a rerun or a resume reuses them). On a fresh run the reference is the
starting policy itself, scored before its first update, so no second copy is loaded; otherwise
(`dpo.reference`, or a resume whose cache is gone) the reference model is loaded, used once and freed.

Each optimizer step: 1) the next micro_batch_size x gradient_accumulation_steps pairs of a seeded epoch order;
2) the learning rate (linear warm-up, then linear or cosine down to a floor); 3) per micro-batch, chosen and
rejected answers in one forward pass, summed answer log-probabilities, and the DPO loss
-(1-e) log sigmoid(beta h) - e log sigmoid(-beta h) with h the chosen-minus-rejected log-ratio to the reference
and e the per-pair smoothing (label_smoothing, and 1 - label_prob for soft labels); each micro-batch's sum over
pairs is divided by the pairs of the whole step, so 1 x 8 equals 8 x 1; 4) gradient clipping and AdamW;
5) held-out loss, implicit rewards, margin and accuracy every `eval_every` steps; 6) metrics; 7) resumable
checkpoints. The final policy goes to `output_dir/policy` (Hugging Face format with its tokenizer) and the
scores to `output_dir/summary.json`.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import os
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from .. import distributed, ops
from ..checkpoint import find_resume_checkpoint, load_json, save_checkpoint, save_json, torch_load
from ..config import ConfigError, check_training_fields, field
from ..data.preferences import PreferenceRow, drop_ties, load_preference_split
from ..data.sft import Encoded, SFTRow, collate, encode_row, end_of_turn_ids
from ..metrics import MetricsLogger, read_metrics
from ..models.loading import disable_dropout, load_causal_lm, load_tokenizer, weights_fingerprint
from ..optimizer_step import optimizer_step
from ..runtime import RunConfig, autocast_for, seed_everything, setup_run
from .sft import BatchStream, restore_trainer_state, save_model, save_step_checkpoint

log = logging.getLogger("rlaif.dpo")

REFERENCE_CACHE = "reference_logps.pt"


@dataclass
class DPOConfig:
    policy: str = field("smollm2-135m-instruct", help="starting policy: built-in name, folder (e.g. the SFT "
                        "output), .gguf or hub id")
    reference: str | None = field(None, help="frozen reference model (None = the starting policy, the usual "
                                  "choice); only its log-probabilities are kept, cached in the run folder")
    data: str = field("", help="preference JSONL of {id, prompt | messages, chosen, rejected, label_prob?} rows, "
                      "e.g. the output of `rlaif label` (required)")
    eval_data: str | None = field(None, help="held-out preference JSONL (None = eval_fraction of data)")
    eval_fraction: float = field(0.1, help="fraction of `data` held out (seeded by run.seed) when eval_data is "
                                 "None; 0 = no held-out metrics")
    eval_every: int = field(50, help="held-out metrics every N optimizer steps (also before the first and after "
                            "the last); 0 = only before and after")
    eval_batch_size: int = field(8, help="pairs per forward pass when scoring without gradients (reference and "
                                 "held-out passes)")
    max_length: int = field(512, help="tokens per prompt + answer; longer prompts lose tokens on the left so the "
                            "answer fits, an answer that alone does not fit is cut on the right (both counted)")
    beta: float = field(0.1, help="DPO temperature: the implicit reward is beta x log(pi / pi_ref); larger = "
                        "stay closer to the reference")
    label_smoothing: float = field(0.0, help="conservative DPO: assume each label is flipped with this "
                                   "probability (0 = the original loss); in [0, 0.5)")
    use_soft_labels: bool = field(True, help="soft labels: a row's `label_prob` p = P(chosen better) is the "
                                  "target (loss p x -log sig(z) + (1-p) x -log sig(-z)); rows without it are hard; "
                                  "false = every row hard")
    epochs: int = field(1, help="passes over the training pairs (ignored when max_steps > 0)")
    max_steps: int = field(0, help="optimizer steps to run; 0 = epochs x ceil(pairs / batch)")
    micro_batch_size: int = field(2, help="pairs per forward/backward (2x as many sequences)")
    gradient_accumulation_steps: int = field(8, help="micro-batches per optimizer step")
    learning_rate: float = field(1e-6, help="peak AdamW learning rate (DPO wants small ones: 5e-7 .. 5e-6)")
    lr_schedule: Literal["linear", "cosine"] = field("linear", help="decay after the warm-up, from the peak down "
                                                      "to min_lr_ratio x peak on the last step")
    min_lr_ratio: float = field(0.0, help="learning-rate floor as a fraction of the peak; 1 = constant")
    warmup_steps: int = field(0, help="linear warm-up steps")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    max_grad_norm: float = field(1.0, help="gradient clipping (global norm)")
    disable_dropout: bool = field(True, help="train without dropout, as the reference was scored (exact resume)")
    gradient_checkpointing: bool = field(False, help="trade compute for activation memory (long inputs on GPU)")
    checkpoint_every: int = field(50, help="resumable checkpoint every N optimizer steps and at the end "
                                  "(0 = never)")

    def validate(self) -> None:
        check_training_fields(self, "dpo")
        if self.max_length < 2:
            raise ConfigError("config key 'dpo.max_length': must be >= 2 (a prompt token and an answer token)")
        if not self.beta > 0:
            raise ConfigError("config key 'dpo.beta': must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError("config key 'dpo.label_smoothing': must be in [0, 0.5) (0.5 ignores the labels)")


# ---------------------------------------------------------------------------------------------------------
# helpers (each a step of the loop)


@dataclass(frozen=True)
class EncodedPair:
    chosen: Encoded
    rejected: Encoded
    smoothing: float  # per-pair label smoothing e: the loss targets P(chosen better) = 1 - e


@dataclass
class DPOData:
    train: list[PreferenceRow]
    eval: list[PreferenceRow]
    ties_dropped: int = 0  # hard labels (dpo.use_soft_labels=false): rows with label_prob = 0.5 left out


def read_data(cfg: DPOConfig, seed: int) -> DPOData:
    """Read, validate and split every input file; bad rows fail here, before anything is written."""
    cfg.validate()
    rows, held = load_preference_split("dpo", cfg.data, cfg.eval_data, cfg.eval_fraction, seed)
    if cfg.use_soft_labels:
        return DPOData(rows, held)
    # hard labels: a tie (label_prob = 0.5) has no winner, and would train as "chosen wins"
    (rows, n_train), (held, n_held) = drop_ties(rows), drop_ties(held)
    if n_train + n_held:
        log.warning("dpo: %d tied pairs (label_prob = 0.5) left out of the hard labels", n_train + n_held)
    if not rows:
        raise ConfigError("config key 'dpo.use_soft_labels': every training pair is a tie (label_prob = 0.5); "
                          "hard labels need a winner")
    return DPOData(rows, held, n_train + n_held)


def pair_smoothing(row: PreferenceRow, cfg: DPOConfig) -> float:
    """e = 1 - target, target = p (1 - s) + (1 - p) s: the soft label p (1 for hard rows) smoothed by s."""
    p = row.label_prob if cfg.use_soft_labels and row.label_prob is not None else 1.0
    return 1.0 - (p * (1.0 - cfg.label_smoothing) + (1.0 - p) * cfg.label_smoothing)


def encode_pairs(tokenizer, rows: list[PreferenceRow], cfg: DPOConfig) -> list[EncodedPair]:
    """Prompt + answer ids with the SFT chat formatting (labels = answer tokens and their end-of-turn token)."""
    end_ids = end_of_turn_ids(tokenizer)

    def enc(row: PreferenceRow, answer: str) -> Encoded:
        return encode_row(tokenizer, SFTRow(row.id, (("user", row.prompt),), answer, row.where), cfg.max_length,
                          end_ids)

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


def reference_logps(cfg: DPOConfig, run: RunConfig, out: Path, pairs: dict[str, list[EncodedPair]], policy,
                    fresh: bool, pad_id: int, device, amp) -> tuple[dict[str, torch.Tensor], str]:
    """Step 3 of the set-up: the cached reference log-probabilities, or computed once and cached.

    `fresh` (no update made yet): with dpo.reference unset, the policy itself is the reference, scored now.
    Returns the tensors and "reused" or "computed".
    """
    name = cfg.reference or cfg.policy
    path = out / REFERENCE_CACHE
    key = cache_key(name, pairs, device, run.precision)
    cached = load_reference_cache(path, key)
    if cached is not None:
        log.info("reference log-probabilities reused from %s", path)
        return cached, "reused"
    own = not (fresh and cfg.reference is None)
    ref = load_causal_lm(name, device=device) if own else policy
    t0 = time.perf_counter()
    cached = {"key": key, "reference": name}
    for part, items in pairs.items():
        cached[f"{part}_chosen"], cached[f"{part}_rejected"] = score_all(ref, items, cfg.eval_batch_size, pad_id,
                                                                          device, amp)
    if own:  # frozen and no longer needed: free it before training
        del ref
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bad = [k for k, v in cached.items() if isinstance(v, torch.Tensor) and not bool(torch.isfinite(v).all())]
    if bad:  # nothing to learn against: stop before the cache or any update is written
        raise FloatingPointError(f"reference {name}: non-finite log-probabilities in {', '.join(bad)}")
    if distributed.is_main():
        save_reference_cache(path, cached)
    distributed.barrier()
    log.info("reference log-probabilities of %d answers computed in %.1f s and cached in %s",
             2 * sum(len(v) for v in pairs.values()), time.perf_counter() - t0, path)
    return cached, "computed"


def pair_stats(losses: torch.Tensor, chosen_r: torch.Tensor, rejected_r: torch.Tensor, prefix: str = ""
               ) -> dict[str, float]:
    """Mean loss, implicit rewards, margin and accuracy (chosen reward > rejected; ties count as wrong)."""
    s = ops.pairwise_stats(chosen_r, rejected_r)
    return {f"{prefix}loss": losses.mean().item(), f"{prefix}rewards_chosen": s["chosen_mean"],
            f"{prefix}rewards_rejected": s["rejected_mean"], f"{prefix}reward_margin": s["margin_mean"],
            f"{prefix}accuracy": s["accuracy"]}


def train_step(model, opt, pairs: list[EncodedPair], ref: tuple[torch.Tensor, torch.Tensor], cfg: DPOConfig,
               pad_id: int, device, amp) -> dict[str, float]:
    """Steps 3-4: per micro-batch, sum of pair losses / pairs of the whole step; clip; AdamW.

    `ref`: (b,) cached reference log-probabilities of the step's chosen and rejected answers. With N processes
    each takes every N-th pair and the gradients are summed over processes (the normaliser counts every
    process's pairs), so the step equals one process's.
    """
    model.train()
    n_pairs = len(pairs)  # the normaliser of the whole optimizer step
    # each process's pairs with their reference log-probs (chosen, rejected)
    mine = list(zip(distributed.my_items(pairs), distributed.my_items(ref[0]).tolist(),
                    distributed.my_items(ref[1]).tolist()))
    parts: dict[str, list[torch.Tensor]] = {k: [torch.zeros(0)] for k in ("losses", "chosen", "rejected", "logp_c",
                                                                          "logp_r")}
    filler = (pairs[0], 0.0, 0.0) if pairs else None
    for chunk, weight in distributed.lockstep_chunks(mine, cfg.micro_batch_size, filler, model):
        part = [p for p, _, _ in chunk]
        chosen, rejected = policy_logps(model, part, pad_id, device, amp)
        eps = torch.tensor([p.smoothing for p in part], device=chosen.device)
        ref_c = torch.tensor([c for _, c, _ in chunk], dtype=torch.float32, device=device)
        ref_r = torch.tensor([r for _, _, r in chunk], dtype=torch.float32, device=device)
        losses, chosen_r, rejected_r = ops.dpo_loss(chosen, rejected, ref_c, ref_r, cfg.beta, eps)
        loss = losses.sum() * weight / n_pairs
        if not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            raise FloatingPointError(f"loss is {loss.item()}")
        distributed.backward(loss, model)
        if weight:
            for k, v in zip(parts, (losses, chosen_r, rejected_r, chosen, rejected)):
                parts[k].append(v.detach().float().cpu())
    norm = optimizer_step(opt, model, cfg.max_grad_norm, "dpo")
    cat = {k: distributed.gather_items(torch.cat(v), n_pairs) for k, v in parts.items()}
    return {**pair_stats(cat["losses"], cat["chosen"], cat["rejected"]),
            "logps_chosen": cat["logp_c"].mean().item(), "logps_rejected": cat["logp_r"].mean().item(),
            "grad_norm": norm, "pairs": n_pairs,
            "tokens": sum(p.chosen.n_trained + p.rejected.n_trained for p in pairs),
            "trained_state_gib": distributed.trained_state_gib(model, opt)}


@torch.no_grad()
def evaluate(model, pairs: list[EncodedPair], ref: tuple[torch.Tensor, torch.Tensor], cfg: DPOConfig, pad_id: int,
             device, amp, prefix: str = "eval_") -> dict[str, float]:
    """Step 5: held-out DPO loss, implicit rewards, margin and accuracy against the cached reference."""
    chosen, rejected = score_all(model, pairs, cfg.eval_batch_size, pad_id, device, amp)
    losses, chosen_r, rejected_r = ops.dpo_loss(chosen, rejected, ref[0], ref[1], cfg.beta,
                                                torch.tensor([p.smoothing for p in pairs]))
    return {**pair_stats(losses, chosen_r, rejected_r, prefix), f"{prefix}pairs": len(pairs)}


def learning_rate(step: int, total: int, cfg: DPOConfig) -> float:
    schedule = ops.linear_with_floor_lr if cfg.lr_schedule == "linear" else ops.cosine_with_floor_lr
    return schedule(step, total, cfg.learning_rate, cfg.min_lr_ratio, cfg.warmup_steps)


def truncation_counts(pairs: list[EncodedPair]) -> dict[str, int]:
    seqs = [e for p in pairs for e in (p.chosen, p.rejected)]
    return {"prompts_truncated": sum(e.prompt_truncated for e in seqs),
            "answers_truncated": sum(e.completion_truncated for e in seqs)}


# ---------------------------------------------------------------------------------------------------------
# the loop


def train(run: RunConfig, cfg: DPOConfig, resolved_config: dict | None = None, data: DPOData | None = None) -> Path:
    """Run DPO; returns the folder of the final policy (Hugging Face format, with the tokenizer).

    `data`: rows already read by `read_data` (the CLI validates them before it writes anything).
    """
    cfg.validate()
    data = data if data is not None else read_data(cfg, run.seed)  # bad input fails before any output
    out, device = setup_run(run, data_parallel=True, fsdp=True)
    seed_everything(run.seed)
    amp = autocast_for(device, run.precision)
    tokenizer = load_tokenizer(cfg.policy, padding_side="left")  # saved with the policy, ready for generation
    pad_id = tokenizer.pad_token_id  # padding is masked by lengths, so pad == eos would be harmless here
    pairs = {"train": encode_pairs(tokenizer, data.train, cfg), "eval": encode_pairs(tokenizer, data.eval, cfg)}
    for name, part in pairs.items():
        if part:
            log.info("%s: %d pairs, %s (max_length %d)", name, len(part), truncation_counts(part), cfg.max_length)
    batch = cfg.micro_batch_size * cfg.gradient_accumulation_steps
    stream = BatchStream(len(pairs["train"]), batch, run.seed)
    total = cfg.max_steps or cfg.epochs * stream.steps_per_epoch

    ckpt = find_resume_checkpoint(out, run.resume)
    if ckpt is not None and (not (ckpt / "model" / "config.json").is_file()
                             or load_json(ckpt / "trainer_state.json").get("stage") != "dpo"):
        raise ConfigError(f"config key 'run.output_dir': {ckpt} is not a DPO checkpoint (another stage's run?); "
                          "pick a fresh run.output_dir or set run.resume=never")
    model = load_causal_lm(str(ckpt / "model") if ckpt is not None else cfg.policy, device=device)
    model.config.pad_token_id = pad_id
    if cfg.disable_dropout:
        disable_dropout(model)
    # reference log-probabilities: once, before any update, cached in the run folder
    ref, ref_source = reference_logps(cfg, run, out, pairs, model, ckpt is None, pad_id, device, amp)
    ref_train = (ref["train_chosen"], ref["train_rejected"])
    ref_eval = (ref["eval_chosen"], ref["eval_rejected"])
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if run.fsdp:  # after the reference log-probs, which the starting policy may have scored whole
        distributed.shard_model(model)
    opt = distributed.make_adamw(model.parameters(), shard_state=run.shard_optimizer, lr=cfg.learning_rate,
                                 weight_decay=cfg.weight_decay)
    opt = distributed.use_deepspeed(model, opt, cfg.max_grad_norm)  # when the launch asked for DeepSpeed
    metrics = MetricsLogger(out, run.report_to, resolved_config, step_key="step")
    start = restore_trainer_state(ckpt, opt, stream, total, log, model) if ckpt is not None else 0
    metrics.truncate_after(start if ckpt is not None else -1)  # each step logged once, step 0 included
    log.info("DPO of %s against %s (beta %g), %d training pairs, %d held-out, %d steps of %d pairs", cfg.policy,
             cfg.reference or "the starting policy", cfg.beta, len(pairs["train"]), len(pairs["eval"]), total, batch)

    if pairs["eval"] and ckpt is None:  # before any update: rewards 0, loss log 2
        metrics.log(0, evaluate(model, pairs["eval"], ref_eval, cfg, pad_id, device, amp))
    bar = tqdm(range(start, total), initial=start, total=total, desc="dpo",
               disable=not run.progress or not distributed.is_main(), dynamic_ncols=True)
    last_eval: dict[str, float] | None = None
    for step in bar:
        t0 = time.perf_counter()
        # 1. batch: the next pairs of this epoch's seeded order, with their cached reference log-probabilities
        idx = stream.take()
        step_pairs = [pairs["train"][i] for i in idx]
        step_ref = (ref_train[0][idx], ref_train[1][idx])
        # 2. learning rate of this step: linear warm-up, then linear or cosine down to the floor
        lr = learning_rate(step, total, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        # 3-4. chosen + rejected forward, DPO loss normalised by the step's pairs; clip; AdamW
        try:
            stats = train_step(model, opt, step_pairs, step_ref, cfg, pad_id, device, amp)
        except FloatingPointError as e:  # the last good checkpoint stays; no NaN weights are written
            raise FloatingPointError(f"step {step + 1}: {e}") from None
        dt = time.perf_counter() - t0
        row = {**stats, "lr": lr, "epoch": stream.progress, **truncation_counts(step_pairs),
               "pairs_per_s": len(step_pairs) / dt, "s_step": dt}
        # 5. held-out loss, rewards, margin and accuracy
        if pairs["eval"] and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == total):
            last_eval = evaluate(model, pairs["eval"], ref_eval, cfg, pad_id, device, amp)
            if not math.isfinite(last_eval["eval_loss"]):  # the model now outputs NaN/inf: stop before saving it
                raise FloatingPointError(f"step {step + 1}: held-out loss is {last_eval['eval_loss']}")
            row.update(last_eval)
        # 6. metrics
        metrics.log(step + 1, row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}", lr=f"{lr:.2e}")
        if not run.progress:
            log.info("step %d/%d loss %.4f acc %.3f margin %.4g lr %.3g grad_norm %.3f%s", step + 1, total,
                     row["loss"], row["accuracy"], row["reward_margin"], lr, row["grad_norm"],
                     f" eval_accuracy {row['eval_accuracy']:.3f}" if "eval_accuracy" in row else "")
        # 7. resumable checkpoint
        if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == total):
            state = {"stage": "dpo", "step": step + 1, "epoch": stream.epoch, "offset": stream.offset,
                     "total_steps": total}
            save_step_checkpoint(out, step + 1, model, opt, state, run.keep_checkpoints, save_checkpoint)
    bar.close()
    metrics.close()

    final = out / "policy"
    save_model(model, tokenizer, final)
    if pairs["eval"] and last_eval is None:  # a rerun of a finished run
        last_eval = evaluate(model, pairs["eval"], ref_eval, cfg, pad_id, device, amp)
    if not distributed.is_main():
        return final
    logged = {r["step"]: r for r in read_metrics(out)}  # the same summary whether or not the run was resumed
    strip = len("eval_")
    summary = {
        "policy": cfg.policy, "reference": cfg.reference or cfg.policy, "beta": cfg.beta, "steps": total,
        "train_pairs": len(pairs["train"]), "eval_pairs": len(pairs["eval"]), "ties_dropped": data.ties_dropped,
        "reference_logps": {"file": str(out / REFERENCE_CACHE), "cache": ref_source},
        "last_step": {k: v for k, v in logged.get(total, {}).items() if not k.startswith("eval_")} or None,
        "eval_before": {k[strip:]: v for k, v in logged[0].items() if k.startswith("eval_")} if 0 in logged
        else None,
        "eval": {k[strip:]: v for k, v in last_eval.items()} if last_eval else None,
        **{f"train_{k}": v for k, v in truncation_counts(pairs["train"]).items()},
    }
    if last_eval:
        log.info("held-out accuracy %.3f, reward margin %.4g, loss %.4f", last_eval["eval_accuracy"],
                 last_eval["eval_reward_margin"], last_eval["eval_loss"])
    save_json(out / "summary.json", summary)
    return final


__all__ = ["DPOConfig", "DPOData", "read_data", "train", "evaluate", "encode_pairs", "pair_smoothing",
           "REFERENCE_CACHE"]
