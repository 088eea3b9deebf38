"""Configuration of the evaluation phase."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EvaluationConfig(BaseModel):
    """How held-out tasks are evaluated after each round. mode greedy gives one sample per task
    (pass@1 = strict accuracy); mode sample draws `n` per task for pass@k with each k in `ks` (k <= n).
    before: also evaluate the model before any training, as round 0. rounds: "all" evaluates the held-out
    tasks after every round, "last" only after the last (the validation tasks, which choose the kept round,
    are evaluated every round all the same). turns: repair turns on public-test feedback after the first greedy
    program (RLEF, `evaluation.multiturn`; 1: single turn); independent: with turns > 1, also score `turns`
    independent samples per task (pass@t, the same budget)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["greedy", "sample"] = "greedy"
    n: int = Field(1, ge=1)
    ks: list[int] = [1]
    before: bool = True
    rounds: Literal["all", "last"] = "all"
    turns: int = Field(1, ge=1)
    independent: bool = False

    @model_validator(mode="after")
    def _greedy_turns(self) -> EvaluationConfig:
        if self.turns > 1 and self.mode != "greedy":
            raise ValueError("turns > 1 evaluates a greedy first program and greedy repairs: set mode to greedy")
        return self
