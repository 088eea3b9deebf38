"""Online RL on execution rewards: pper's sandbox as a TRL reward function (`ExecutionReward`,
`execution_reward`) and the datasets it scores. Importing this package needs no trl; GRPO runs do (`pip install
pper[rl]`)."""

from typing import Any

from .data import rl_dataset
from .reward import REWARD_KINDS, ExecutionReward, program_for, reward_of

__all__ = ["REWARD_KINDS", "ExecutionReward", "execution_reward", "program_for", "reward_of", "rl_dataset"]


def __getattr__(name: str) -> Any:
    if name == "execution_reward":
        from . import reward

        return reward.execution_reward
    raise AttributeError(name)
