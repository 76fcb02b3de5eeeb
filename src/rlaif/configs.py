"""The root config: shared `run` settings plus one section per stage (later stages add theirs)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import field
from .pipeline import PipelineConfig
from .runtime import RunConfig
from .stages.audit import AuditConfig
from .stages.critique import CritiqueConfig
from .stages.dpo_config import DPOConfig
from .stages.evaluate import EvalConfig
from .stages.grpo_config import GRPOConfig
from .stages.label import LabelConfig
from .stages.ppo_config import PPOConfig
from .stages.rm_config import RMConfig
from .stages.sft_config import SFTConfig


@dataclass
class RootConfig:
    run: RunConfig = field(default_factory=RunConfig, help="output folder, seed, device, precision, resume")
    ppo: PPOConfig = field(default_factory=PPOConfig, help="PPO stage (`rlaif ppo`)")
    sft: SFTConfig = field(default_factory=SFTConfig, help="supervised fine-tuning stage (`rlaif sft`)")
    rm: RMConfig = field(default_factory=RMConfig, help="reward-model stage (`rlaif rm`, Bradley-Terry)")
    dpo: DPOConfig = field(default_factory=DPOConfig, help="Direct Preference Optimization (`rlaif dpo`) on "
                           "preference rows")
    label: LabelConfig = field(default_factory=LabelConfig, help="AI-feedback labels (`rlaif label`): sample, "
                               "judge both orders, write preference rows")
    judge_audit: AuditConfig = field(default_factory=AuditConfig, help="judge audit on a gold set "
                                     "(`rlaif judge-audit`)")
    grpo: GRPOConfig = field(default_factory=GRPOConfig, help="critic-free GRPO / RLOO (`rlaif grpo`) on prompts "
                             "with a reward model, a Python reward or a judge")
    eval: EvalConfig = field(default_factory=EvalConfig, help="evaluation (`rlaif eval`): judge win-rate vs a "
                             "baseline with a bootstrap interval, reward, KL, length, diversity, hacking monitors")
    critique: CritiqueConfig = field(default_factory=CritiqueConfig, help="Constitutional AI's critique-and-revise "
                                     "phase (`rlaif critique`): SFT and preference rows from revised answers")
    pipeline: PipelineConfig = field(default_factory=PipelineConfig, help="`rlaif pipeline` / `rlaif demo`: which "
                                     "stages run; each feeds the next")
