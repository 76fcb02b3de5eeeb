"""The reward model's configuration (`rm.*` keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..config import ConfigError, check_training_fields, field
from .training_config import HUMAN_LABELS_HELP, StepTrainingConfig


@dataclass
class RMConfig(StepTrainingConfig):
    model: str = field("smollm2-135m-instruct", help="backbone: built-in name (smollm2-135m-instruct, minilm-l6), "
                       "folder or hub id; a decoder can also initialise PPO's critic (ppo.value_init=reward)")
    data: str = field("", help="preference JSONL of {id, prompt | messages, chosen, rejected, label_prob?, "
                      "margin?, judge?} rows (required)")
    human_labels: str = field("", help=HUMAN_LABELS_HELP)
    eval_batch_size: int = field(16, help="pairs per held-out forward pass (also for the final bias pass)")
    max_length: int = field(512, help="tokens per (question, answer) input; decoders keep the end (the answer), "
                            "encoders cut the longer text; keep ppo.reward.max_length >= this")
    micro_batch_size: int = field(4, help="pairs per forward/backward (2x as many sequences)")
    lr_schedule: Literal["linear", "cosine"] = field("linear", help="decay after the warm-up, from the peak down "
                                                      "to min_lr_ratio x peak on the last step")
    margin: float = field(0.0, help="margin m in -log sigmoid(r_c - r_r - m); with soft labels m x (2p - 1), so a "
                          "tie gets none; a row's own `margin` field wins")
    use_label_prob: bool = field(True, help="soft labels: cross-entropy against a row's `label_prob` where "
                                 "present (rows without it are hard labels); false = every row hard")
    center_coef: float = field(0.0, help="reward centering: adds coef x mean((r_c + r_r)^2) (Eisenstein et al. "
                               "2023 use 0.01); 0 = off")
    disable_dropout: bool = field(True, help="train without dropout (deterministic rewards, exact resume)")

    def validate(self) -> None:
        check_training_fields(self, "rm")
        if self.max_length < 4:
            raise ConfigError("config key 'rm.max_length': must be >= 4")
        if self.center_coef < 0:
            raise ConfigError("config key 'rm.center_coef': must be >= 0")
