"""The root config: shared `run` settings plus one section per stage (later stages add theirs)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import field
from .runtime import RunConfig
from .stages.audit import AuditConfig
from .stages.label import LabelConfig
from .stages.ppo import PPOConfig
from .stages.rm import RMConfig
from .stages.sft import SFTConfig


@dataclass
class RootConfig:
    run: RunConfig = field(default_factory=RunConfig, help="output folder, seed, device, precision, resume")
    ppo: PPOConfig = field(default_factory=PPOConfig, help="PPO stage (`rlaif ppo`)")
    sft: SFTConfig = field(default_factory=SFTConfig, help="supervised fine-tuning stage (`rlaif sft`)")
    rm: RMConfig = field(default_factory=RMConfig, help="reward-model stage (`rlaif rm`, Bradley-Terry)")
    label: LabelConfig = field(default_factory=LabelConfig, help="AI-feedback labels (`rlaif label`): sample, "
                               "judge both orders, write preference rows")
    judge_audit: AuditConfig = field(default_factory=AuditConfig, help="judge audit on a gold set "
                                     "(`rlaif judge-audit`)")
