"""The peer: TRL 1.12.0's `trl.experimental.ppo.PPOTrainer` on our fixed PPO workload; prints one JSON line.

Runs inside its own venv (bench/.venv-trl, made by bench/compare_peer.py), never in rlaif's: it imports only
torch, transformers, datasets and trl. The workload mirrors bench/ppo_throughput.py as far as TRL allows:

- policy = the SmolLM2-135M-Instruct folder (fp32), ref_model = a second copy loaded from the same folder;
- value_model = AutoModelForSequenceClassification(num_labels=1) on the policy folder with its new scalar head
  zeroed (rlaif's `ppo.value_init=policy` does exactly this);
- reward_model = the sequence classifier folder given with --reward-model (compare_peer.py saves one shared RM
  and hands the same folder to rlaif);
- 8 rollouts per iteration: per_device_train_batch_size 4 x gradient_accumulation_steps 2, num_mini_batches 1,
  num_ppo_epochs 1 (one optimizer step per iteration); rollout forward/generation batch 8;
- response_length 48, temperature 0.7 (TRL samples with top_k 0, top_p 1, as rlaif does), kl_coef 0.05,
  lr 1e-6, TRL's default optimizer with torch >= 2.8 (adamw_torch_fused, as rlaif's),
  fp32 (bf16 off; --precision bf16 turns it on), no gradient checkpointing (TRL's default is on), torch threads --threads;
- every response is exactly 48 tokens: stop_token="eos" makes TRL set the policy's generation EOS to the
  tokenizer's <|im_end|>, and `policy.generation_config.min_new_tokens = 48` (which transformers merges into the
  GenerationConfig TRL passes, whose min_new_tokens is unset) suppresses that EOS for all 48 steps — the same
  MinNewTokens mechanism rlaif uses (`ppo.generation.min_new_tokens=48`). The script counts what generate()
  returned and reports EOS / pad tokens sampled, so a run where this did not hold is visible;
- prompts: the rows of --prompts in file order, 8 per iteration (TRL's own DataLoader shuffles; it is replaced
  by an unshuffled one over the same dataset, prepared by the same accelerator, so both systems see the same
  prompts in the same iterations). One spare batch follows the last one used so accelerate never sees the end of
  the DataLoader (on the last batch it would force an optimizer step after every micro-batch).

Measured: wall time of each whole PPO iteration (generation + scoring + update + TRL's logging), from
on_train_begin / the previous on_step_end to on_step_end, model loading excluded; generated tokens (up to and
including the first EOS, as rlaif counts them); peak RSS of this process (ru_maxrss, loading included, as in
rlaif's benchmark).

    bench/.venv-trl/bin/python bench/peer_trl_ppo.py --model DIR --reward-model DIR --prompts FILE.jsonl
        [--iterations 4] [--threads 2]

--prompts: JSONL (or a JSON list) of rows with "messages" ([{"role", "content"}, ...], ending with a user turn)
or "prompt" (a string: one user turn); each is formatted with the tokenizer's chat template and a generation
prompt, as rlaif formats its prompts (longer than 512 tokens: the last 512 are kept, as in rlaif).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BATCH = 8  # rollouts per iteration
MICRO_BATCH = 4
GRAD_ACCUM = 2
RESPONSE_LENGTH = 48
MAX_PROMPT_TOKENS = 512


def read_prompt_rows(path: Path) -> list[list[dict[str, str]]]:
    """Chat messages of each prompt row, in file order."""
    text = path.read_text(encoding="utf-8")
    rows: list[Any] = json.loads(text) if path.suffix == ".json" else [
        json.loads(line) for line in text.splitlines() if line.strip()]
    out = []
    for i, row in enumerate(rows):
        if "messages" in row:
            out.append([{"role": m["role"], "content": m["content"]} for m in row["messages"]])
        elif "prompt" in row:
            out.append([{"role": "user", "content": row["prompt"]}])
        else:
            raise SystemExit(f"{path}: row {i + 1} has neither 'messages' nor 'prompt'")
    if not out:
        raise SystemExit(f"{path}: no prompts")
    return out


def prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)[-MAX_PROMPT_TOKENS:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="policy folder (SmolLM2-135M-Instruct, HF format)")
    ap.add_argument("--reward-model", required=True, help="sequence-classifier folder (num_labels=1)")
    ap.add_argument("--prompts", required=True, type=Path, help="prompt rows, used in file order")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16 = TRL's bf16=True (accelerate's bf16 autocast, fp32 master weights)")
    a = ap.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(a.threads)
    import transformers
    import trl
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        TrainerCallback,
    )
    from transformers.utils import logging as hf_logging
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "left"  # TRL generates from left-padded queries
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        raise SystemExit("the tokenizer needs a pad token distinct from EOS (TRL masks pad ids as padding)")

    rows = read_prompt_rows(a.prompts)
    needed = BATCH * (a.iterations + 1)  # + one spare batch: see the module docstring
    messages = [rows[i % len(rows)] for i in range(needed)]
    dataset = Dataset.from_dict({"input_ids": [prompt_ids(tok, m) for m in messages]})

    torch.manual_seed(a.seed)
    policy = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=1, dtype=torch.float32)
    value_model.config.pad_token_id = tok.pad_token_id
    with torch.no_grad():  # rlaif's critic: policy backbone + a new scalar head started at V = 0
        value_model.score.weight.zero_()
        if value_model.score.bias is not None:
            value_model.score.bias.zero_()
    reward_model = AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1,
                                                                      dtype=torch.float32)
    reward_model.config.pad_token_id = tok.pad_token_id
    policy.generation_config.min_new_tokens = RESPONSE_LENGTH  # EOS unsampleable for all 48 steps

    # what generate() produced, counted per row as rlaif counts it (up to and including the first EOS)
    gen: dict[str, float] = {"calls": 0, "rows": 0, "new_tokens": 0, "counted_tokens": 0, "eos": 0, "pad": 0,
                             "min_len": 1 << 30, "max_len": 0, "seconds": 0.0}
    orig_generate = policy.generate

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = orig_generate(*args, **kwargs)
        gen["seconds"] += time.perf_counter() - t0
        new = out.sequences[:, kwargs["input_ids"].shape[1]:]
        is_eos = new == tok.eos_token_id
        eos_before = torch.cumsum(is_eos.long(), 1) - is_eos.long()
        gen["calls"] += 1
        gen["rows"] += new.shape[0]
        gen["new_tokens"] += new.numel()
        gen["counted_tokens"] += int((eos_before == 0).sum())
        gen["eos"] += int(is_eos.sum())
        gen["pad"] += int((new == tok.pad_token_id).sum())
        gen["min_len"] = min(gen["min_len"], new.shape[1])
        gen["max_len"] = max(gen["max_len"], new.shape[1])
        return out

    policy.generate = counting_generate  # instance attribute: TRL calls unwrapped_model.policy.generate

    class IterationTimer(TrainerCallback):
        def __init__(self) -> None:
            self.last = 0.0
            self.seconds: list[float] = []
            self.logs: list[dict[str, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            self.seconds.append(now - self.last)
            self.last = now

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                self.logs.append(dict(logs))

    timer = IterationTimer()
    load_before = os.getloadavg()
    if a.precision == "bf16":
        # TRL 1.12's PPOTrainer builds its own Accelerator() without mixed_precision, and transformers 5.x's
        # TrainingArguments no longer exports bf16 as ACCELERATE_MIXED_PRECISION: bf16=True alone leaves the run
        # in fp32. The variable makes the Accelerator autocast what TRL prepares with it (the policy + critic
        # update); TRL generates and scores with the unprepared models, so those passes stay fp32 in TRL.
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    with tempfile.TemporaryDirectory() as out_dir, contextlib.redirect_stdout(sys.stderr):
        cfg = PPOConfig(
            output_dir=out_dir, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
            seed=a.seed, use_cpu=True, bf16=a.precision == "bf16", fp16=False, gradient_checkpointing=False,
            per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=GRAD_ACCUM, num_mini_batches=1,
            num_ppo_epochs=1, total_episodes=BATCH * a.iterations, local_rollout_forward_batch_size=BATCH,
            response_length=RESPONSE_LENGTH, stop_token="eos", temperature=0.7, kl_coef=0.05,
            learning_rate=1e-6, lr_scheduler_type="constant", optim="adamw_torch_fused", num_sample_generations=0,
            dataloader_num_workers=0,
        )
        trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref_model,
                             reward_model=reward_model, train_dataset=dataset, value_model=value_model,
                             callbacks=[timer])
        collator = DataCollatorWithPadding(tok)
        # the same prompts in the same iterations as rlaif: TRL's own DataLoader is shuffle=True
        trainer.dataloader = trainer.accelerator.prepare(DataLoader(
            dataset, batch_size=cfg.local_batch_size, shuffle=False, collate_fn=collator, drop_last=True))
        steps = {"n": 0}
        inner_opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        inner_opt.register_step_post_hook(lambda *_: steps.__setitem__("n", steps["n"] + 1))
        trainer.train()

    s_iter = timer.seconds
    if len(s_iter) != a.iterations:
        raise SystemExit(f"expected {a.iterations} iterations, timed {len(s_iter)}")
    steady = s_iter[1:] or s_iter
    tokens = int(gen["counted_tokens"])
    scores = [lg["objective/scores"] for lg in timer.logs if "objective/scores" in lg]
    print(json.dumps({
        "system": f"trl-{trl.__version__} PPOTrainer",
        "workload": f"smollm2-135m ppo 8x48 new tokens, 1 epoch, {a.precision}",
        "precision": a.precision,
        "accelerator_mixed_precision": trainer.accelerator.mixed_precision,
        "reward": f"reward model {a.reward_model} (TRL scores the query+response token ids, last token)",
        "iterations": len(s_iter),
        "s_per_iteration": sum(s_iter) / len(s_iter),
        "s_per_iteration_steady": sum(steady) / len(steady),
        "tokens_per_s": tokens / sum(s_iter),
        "s_generate": gen["seconds"] / len(s_iter),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "tokens": tokens,
        "response_lengths": [int(gen["min_len"]), int(gen["max_len"])],
        "eos_sampled": int(gen["eos"]),
        "pad_sampled": int(gen["pad"]),
        "optimizer_steps": steps["n"],
        "score_mean": sum(scores) / len(scores) if scores else None,
        "s_iterations": s_iter,
        "threads": torch.get_num_threads(),
        "loadavg_before": load_before[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "python": platform.python_version(),
        "device": "cpu",
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
