"""Configuration of online RL runs (`pper rl`): GRPO through TRL on pper's execution reward."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..buffer.priority import Scheme

RewardKind = Literal["pass_rate", "strict", "coderl"]
REWARD_KINDS: tuple[str, ...] = get_args(RewardKind)


class GroupReplayConfig(BaseModel):
    """P2Value replay of GRPO groups (`pper.rl.replay`): `fraction` of each step's groups are drawn from the stored
    groups whose rewards differ instead of being sampled, by the group priority of `buffer.GroupReplay` (mean
    P2Value of the group's completions, alpha weighing possibility against reward), ranked or proportional, with
    exponent e; the keys mirror the `replay` section. 0: no replay (plain GRPO)."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(0.0, ge=0.0, lt=1.0)
    priority: Scheme = "rank"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    exponent: float = Field(1.0, ge=0.0)


def group_replay_problem(fraction: float, beta: float, use_vllm: bool) -> str | None:
    """Why group replay (`fraction` > 0) cannot run with these GRPO settings, or None."""
    if fraction > 0 and beta != 0.0:
        return "group replay needs rl.beta 0: a replayed group has no reference log-probabilities"
    if fraction > 0 and use_vllm:
        return "group replay does not store vLLM's sampling log-probabilities: use_vllm is not supported"
    return None


class RLConfig(BaseModel):
    """GRPO (TRL's `GRPOTrainer`) on the training tasks, rewarded by pper's sandbox (`ExecutionReward`).

    Each step draws `prompts_per_step` training tasks and samples `group_size` completions of each (at most
    `max_completion_length` tokens, at `temperature`); rewards are `reward` (pass_rate, strict or coderl) on the
    private tests; advantages are normalised within each group (TRL's GRPO). `steps` optimiser steps at
    `learning_rate`, `beta` the KL coefficient to the initial policy (0: no reference model, TRL's default).
    method: "lora" (PEFT adapters as in `training.lora`) or "full". `save_steps`: TRL checkpoints a killed run
    resumes from. `max_seconds`: a wall-clock budget for training (summed over resumed attempts): training stops
    after the step that spends it, `steps` being then only a cap (the experiment runner's equal-wall-clock arms set
    it). `turns` > 1: multi-turn rollouts (`pper.rl.multiturn`): each completion may take up to `turns` answers, the
    later ones after feedback on the public tests (`feedback.max_chars`), rewarded on the last. On a GPU, `use_vllm`
    passes through to TRL (vLLM installed by the user). `replay`: prioritized
    replay of stored groups (`GroupReplayConfig`; every group is stored in the run's buffer when it is on).
    `prm_weight` w > 0: the process reward model of `prm.model` (default RUN/prm, trained by `pper prm train`) adds
    a dense term to each program line's tokens, A_it = A_i + w * D_il(t) (`pper.rl.dense`); 0: plain GRPO.
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "full"] = "lora"
    steps: int = Field(20, ge=1)
    group_size: int = Field(4, ge=2)
    prompts_per_step: int = Field(2, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    beta: float = Field(0.0, ge=0.0)
    max_completion_length: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)
    reward: RewardKind = "pass_rate"
    save_steps: int = Field(5, ge=1)
    use_vllm: bool = False
    max_seconds: float | None = Field(None, gt=0)
    turns: int = Field(1, ge=1)
    replay: GroupReplayConfig = GroupReplayConfig()
    prm_weight: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _replay_fits(self) -> RLConfig:
        problem = group_replay_problem(self.replay.fraction, self.beta, self.use_vllm)
        if problem:
            raise ValueError(problem)
        if self.replay.fraction > 0 and self.replay.priority == "proportional" and self.reward == "coderl":
            raise ValueError(
                "replay.priority proportional needs values >= 0, and coderl rewards go down to -1: use "
                "replay.priority rank (or uniform), or reward pass_rate or strict"
            )
        return self
