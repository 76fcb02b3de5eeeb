"""Pure tensor math for RLHF/RLAIF: masking, log-probs, KL, rewards, GAE and losses (torch only)."""

from .advantages import gae
from .kl import AdaptiveKLController, FixedKLController, kl, make_kl_controller
from .logprobs import entropy_from_logits, full_kl_from_logits, logprobs_from_logits
from .losses import bradley_terry_loss, ppo_policy_loss, ppo_value_loss
from .masking import masked_mean, masked_sum, masked_var, whiten, whiten_with
from .rewards import last_valid_index, shaped_rewards

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "bradley_terry_loss",
    "entropy_from_logits",
    "full_kl_from_logits",
    "gae",
    "kl",
    "last_valid_index",
    "logprobs_from_logits",
    "make_kl_controller",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "ppo_policy_loss",
    "ppo_value_loss",
    "shaped_rewards",
    "whiten",
    "whiten_with",
]

from .sft import IGNORE_INDEX, completion_labels, cosine_with_floor_lr, token_ce_sum  # noqa: E402

__all__ += ["IGNORE_INDEX", "completion_labels", "cosine_with_floor_lr", "token_ce_sum"]

from .rm import linear_with_floor_lr, pairwise_stats, reward_centering_penalty  # noqa: E402

__all__ += ["linear_with_floor_lr", "pairwise_stats", "reward_centering_penalty"]

from .dpo import dpo_loss, sequence_logprobs  # noqa: E402
from .group_advantages import centre_within_groups, group_advantages, rloo_advantages  # noqa: E402

__all__ += ["centre_within_groups", "dpo_loss", "group_advantages", "rloo_advantages", "sequence_logprobs"]

from .evaluation import (  # noqa: E402
    bootstrap_mean_ci,
    cohens_kappa,
    distinct_n,
    paired_difference,
    pearson,
    sign_disagreement,
    wilson_interval,
    win_outcomes,
)

__all__ += ["bootstrap_mean_ci", "cohens_kappa", "distinct_n", "paired_difference", "pearson", "sign_disagreement",
            "wilson_interval", "win_outcomes"]
