"""DPO's configuration (`dpo.*` keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, check_training_fields, field
from .training_config import HUMAN_LABELS_HELP, StepTrainingConfig


@dataclass
class DPOConfig(StepTrainingConfig):
    policy: str = field("smollm2-135m-instruct", help="starting policy: built-in name, folder (e.g. the SFT "
                        "output), .gguf or hub id")
    reference: str | None = field(None, help="frozen reference model (None = the starting policy, the usual "
                                  "choice); only its log-probabilities are kept, cached in the run folder")
    data: str = field("", help="preference JSONL of {id, prompt | messages, chosen, rejected, label_prob?} rows, "
                      "e.g. the output of `rlaif label` (required)")
    human_labels: str = field("", help=HUMAN_LABELS_HELP)
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
    micro_batch_size: int = field(2, help="pairs per forward/backward (2x as many sequences)")
    learning_rate: float = field(1e-6, help="peak AdamW learning rate (DPO wants small ones: 5e-7 .. 5e-6)")
    lr_schedule: Literal["linear", "cosine"] = field("linear", help="decay after the warm-up, from the peak down "
                                                      "to min_lr_ratio x peak on the last step")
    min_lr_ratio: float = field(0.0, help="learning-rate floor as a fraction of the peak; 1 = constant")
    disable_dropout: bool = field(True, help="train without dropout, as the reference was scored (exact resume)")

    def validate(self) -> None:
        check_training_fields(self, "dpo")
        if self.max_length < 2:
            raise ConfigError("config key 'dpo.max_length': must be >= 2 (a prompt token and an answer token)")
        if not self.beta > 0:
            raise ConfigError("config key 'dpo.beta': must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError("config key 'dpo.label_smoothing': must be in [0, 0.5) (0.5 ignores the labels)")
