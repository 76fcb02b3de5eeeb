"""The keys every step-based training stage (sft, rm, dpo) shares, defined once: the held-out split, batch
sizes, the learning-rate schedule, AdamW, checkpoints. A stage's config inherits them and re-declares only the
keys whose default (or meaning) is its own; `--help` lists the stage's own keys first."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import field


@dataclass
class StepTrainingConfig:
    eval_data: str | None = field(None, help="held-out rows in the format of `data` (None = eval_fraction of "
                                  "data)")
    eval_fraction: float = field(0.1, help="fraction of `data` held out (seeded by run.seed) when eval_data is "
                                 "None; 0 = no held-out metrics")
    eval_every: int = field(50, help="held-out metrics every N optimizer steps (also before the first and after "
                            "the last); 0 = only before and after")
    eval_batch_size: int = field(8, help="rows per held-out forward pass")
    max_length: int = field(512, help="tokens per example")
    epochs: int = field(1, help="passes over the training rows (ignored when max_steps > 0)")
    max_steps: int = field(0, help="optimizer steps to run; 0 = epochs x ceil(rows / batch)")
    micro_batch_size: int = field(4, help="rows per forward/backward")
    gradient_accumulation_steps: int = field(8, help="micro-batches per optimizer step")
    learning_rate: float = field(1e-5, help="peak AdamW learning rate")
    min_lr_ratio: float = field(0.1, help="learning-rate floor as a fraction of the peak; 1 = constant")
    warmup_steps: int = field(0, help="linear warm-up steps")
    weight_decay: float = field(0.0, help="AdamW weight decay")
    max_grad_norm: float = field(1.0, help="gradient clipping (global norm)")
    gradient_checkpointing: bool = field(False, help="trade compute for activation memory (long inputs on GPU)")
    checkpoint_every: int = field(50, help="resumable checkpoint every N optimizer steps and at the end "
                                  "(0 = never)")


HUMAN_LABELS_HELP = ("hybrid labels: a JSONL of {id, verdict: chosen | rejected | tie | skip} (e.g. the "
                     "human_labels.jsonl of `rlaif review`): a person's verdict overrides the AI label of the same "
                     "pair; rows with prompt, chosen and rejected of their own join the training pairs; '' = AI "
                     "labels only")

__all__ = ["StepTrainingConfig", "HUMAN_LABELS_HELP"]
