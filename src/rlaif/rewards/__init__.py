"""Reward sources for PPO behind one interface: `source(prompts, responses) -> (b,) float tensor`."""

from .sources import (
    CallableReward,
    EnsembleReward,
    ModelReward,
    RewardSource,
    load_callable,
    make_reward_source,
)

__all__ = ["CallableReward", "EnsembleReward", "ModelReward", "RewardSource", "load_callable", "make_reward_source"]
