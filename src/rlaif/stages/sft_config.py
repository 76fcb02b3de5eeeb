"""SFT's configuration (`sft.*` keys)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError, check_training_fields, field
from .training_config import StepTrainingConfig


@dataclass
class SFTConfig(StepTrainingConfig):
    model: str = field("smollm2-135m-instruct", help="model to fine-tune: built-in name, folder, .gguf or hub id")
    data: str = field("builtin:demo-train", help="JSONL or `datasets` save_to_disk folder of {prompt | messages, "
                      "completion} or {prompt, chosen, rejected} rows; builtin:demo-train = prompt + reference")
    eval_fraction: float = field(0.0, help="fraction of `data` held out (seeded by run.seed) when eval_data is "
                                 "None; 0 = no held-out loss")
    max_length: int = field(1024, help="tokens per example; longer prompts lose tokens on the left so the answer "
                            "fits, an answer that alone does not fit is cut on the right (both counted)")
    learning_rate: float = field(9e-6, help="peak AdamW learning rate (the seed's)")
    min_lr_ratio: float = field(0.3, help="cosine floor as a fraction of the peak (the seed's 30 %); 1 = constant")

    def validate(self) -> None:
        check_training_fields(self, "sft")
        if self.max_length < 2:
            raise ConfigError("config key 'sft.max_length': must be >= 2 (a prompt token and an answer token)")
