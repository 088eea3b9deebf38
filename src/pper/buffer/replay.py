"""PPER: prioritized replay of tested programs by P2Value, and the configuration that drives it."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import PperError
from .priority import Possibility, Scheme, importance_weights, p2value, possibility, priorities
from .sampler import PrioritizedSampler
from .store import ReplayBuffer, ReplayTable


class ReplayConfig(BaseModel):
    """How minibatches are drawn from the buffer.

    priority: "rank" (p_i = 1 / rank of P2Value, the paper's robust choice), "proportional"
    (p_i = P2Value) or "uniform" (ablation). alpha weighs possibility against pass rate in P2Value;
    exponent is e in P(i) = p_i^e / sum_k p_k^e. min_pass_rate keeps only programs at or above a pass
    rate (1.0 gives the rejection-sampling baseline).

    importance_beta is PER's importance-sampling exponent beta: each draw carries the weight
    w_i = (N * P(i))^-beta / max_j w_j (P(i) the draw probability, N the programs in the replay), by which
    training scales the program's loss; 0 (the paper's setting) weighs every draw 1. rescore recomputes the
    possibility P(t) of every program under the model being trained before each round's replay, instead of the
    stored log-probability of the model that sampled it (which goes stale as training moves); the trainer
    does it and builds the replay from the rescored table.

    prm_weight (w) adds a process reward model's judgement to P2Value (`priority.p2value`): the pass rate becomes
    (1 - w) * pass_rate + w * the program's mean PRM line score, from the scores of PRM `prm` in the buffer
    (None: the PRM whose scores were stored last; `pper prm score`).
    """

    model_config = ConfigDict(extra="forbid")

    priority: Scheme = "rank"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    exponent: float = Field(1.0, ge=0.0)
    possibility: Possibility = "geometric"
    min_pass_rate: float | None = Field(None, ge=0.0, le=1.0)
    importance_beta: float = Field(0.0, ge=0.0)
    rescore: bool = False
    prm_weight: float = Field(0.0, ge=0.0, le=1.0)
    prm: str | None = None


class Draw(NamedTuple):
    """One replayed program, why it was drawn (probability P(i)), and its importance-sampling weight."""

    program_id: int
    task_id: str
    possibility: float
    pass_rate: float
    p2value: float
    probability: float
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class Replay:
    """Prioritized replay over a snapshot of the buffer's tested programs.

    `table` is usually `buffer.replay_table(...)` (see `from_buffer`); a rescored replay passes the same table
    with the current model's log-probabilities: `Replay(dataclasses.replace(table, logprob=..., num_tokens=...),
    config, seed)`.
    """

    def __init__(self, table: ReplayTable, config: ReplayConfig, seed: int | None = None):
        _check_table(table)
        if len(table) == 0:
            raise PperError(
                "nothing to replay: the buffer has no tested programs"
                + (" at or above min_pass_rate" if config.min_pass_rate is not None else "")
            )
        self.table, self.config = table, config
        self.possibility = possibility(table.logprob, table.num_tokens, config.possibility)
        self.p2value = p2value(self.possibility, table.pass_rate, config.alpha, table.prm_score, config.prm_weight)
        # priorities() makes them non-negative (and refuses a negative P2Value): the sampler need not check again
        prio = priorities(self.p2value, config.priority)
        self.sampler = PrioritizedSampler(prio, config.exponent, seed, checked=True)
        if self.sampler.total <= 0:
            raise PperError(
                f"nothing to replay with priority={config.priority!r}, alpha={config.alpha}: every P2Value is 0 "
                "(no tested program passes a test); use priority=rank or alpha > 0"
            )
        self.probability = self.sampler.probabilities()
        self.weight = importance_weights(self.probability, config.importance_beta)

    @classmethod
    def from_buffer(cls, buffer: ReplayBuffer, config: ReplayConfig, seed: int | None = None) -> Replay:
        return cls(replay_table(buffer, config), config, seed)

    def __len__(self) -> int:
        return len(self.table)

    def sample(self, n: int) -> list[Draw]:
        """Draw `n` programs with replacement."""
        i, t = self.sampler.sample(n), self.table
        columns = (t.program_id, t.task_id, self.possibility, t.pass_rate, self.p2value, self.probability, self.weight)
        return list(map(Draw._make, zip(*(c[i].tolist() for c in columns), strict=True)))


def replay_table(buffer: ReplayBuffer, config: ReplayConfig) -> ReplayTable:
    """The buffer's table for `config`: programs at or above `min_pass_rate`, with the PRM's mean line scores when
    `prm_weight` > 0 (a clear error when the buffer holds no PRM score)."""
    prm = None
    if config.prm_weight > 0:
        prm = config.prm or buffer.latest_prm()
        if prm is None or prm not in buffer.prm_ids():
            raise PperError(
                f"replay.prm_weight is {config.prm_weight} but the buffer holds no scores of "
                + (f"PRM {config.prm!r}" if config.prm else "any PRM")
                + ": run `pper prm label`, `pper prm train` and `pper prm score` on the run first"
            )
    return buffer.replay_table(config.min_pass_rate, prm)


def _check_table(table: ReplayTable) -> None:
    """Columns of one length, log-probabilities finite and <= 0, token counts >= 1 (a rescored table too)."""
    n = len(table)
    columns = {"task_id": table.task_id, "logprob": table.logprob, "num_tokens": table.num_tokens}
    columns["pass_rate"] = table.pass_rate
    for name, column in columns.items():
        if np.shape(column) != (n,):
            raise ValueError(f"replay table: {name} has shape {np.shape(column)}, program_id has ({n},)")
    if n and (not np.all(np.isfinite(table.logprob)) or np.max(table.logprob) > 1e-6):
        raise ValueError("replay table: every logprob must be finite and <= 0")
    if n and np.min(table.num_tokens) < 1:
        raise ValueError("replay table: every num_tokens must be >= 1")
    if n and not (np.min(table.pass_rate) >= 0 and np.max(table.pass_rate) <= 1):
        raise ValueError("replay table: every pass_rate must be in [0, 1]")


class GroupReplay:
    """Prioritized replay of stored online-RL groups (`ReplayBuffer.add_group`), the group as the unit.

    Eligible groups are those whose rewards differ (GRPO's advantage of a group whose rewards all tie is zero).
    Group g's value is the mean over its completions j of P2Value_j = alpha * P(t_j) + (1 - alpha) * r_j, that is

        v_g = alpha * mean_j P(t_j) + (1 - alpha) * mean_j r_j,

    with P(t_j) the geometric-mean token probability under the sampling policy; its priority p_g is v_g
    ("proportional"), 1 / rank of v_g ("rank") or 1 ("uniform"), and draws follow P(g) = p_g^e / sum_k p_k^e, with
    replacement, the same rule as `Replay`. The snapshot is rebuilt when the buffer holds new groups.
    """

    def __init__(
        self, buffer: ReplayBuffer, alpha: float = 0.5, priority: Scheme = "rank", exponent: float = 1.0,
        seed: int | None = None,
    ):  # fmt: skip
        self.buffer, self.alpha, self.priority, self.exponent = buffer, alpha, priority, exponent
        self._rng = np.random.default_rng(seed)
        self._count = -1
        self.ids = np.zeros(0, dtype=np.int64)
        self.probability = np.zeros(0)

    def _refresh(self) -> None:
        count = self.buffer.group_count()
        if count == self._count:
            return
        self._count = count
        self.ids, mean_possibility, mean_reward = self.buffer.group_table()
        if not len(self.ids):
            self.probability = np.zeros(0)
            return
        values = p2value(mean_possibility, mean_reward, self.alpha)
        sampler = PrioritizedSampler(priorities(values, self.priority), self.exponent)
        self.probability = sampler.probabilities() if sampler.total > 0 else np.zeros(len(self.ids))

    def __len__(self) -> int:
        self._refresh()
        return int((self.probability > 0).sum())

    def sample(self, n: int, rng: np.random.Generator | None = None) -> list[int]:
        """The ids of `n` groups drawn with replacement (none when no stored group is eligible), with `rng` (default:
        the generator seeded at construction)."""
        self._refresh()
        if n <= 0 or not len(self.ids) or self.probability.sum() <= 0:
            return []
        rng = self._rng if rng is None else rng
        return self.ids[rng.choice(len(self.ids), size=n, p=self.probability)].tolist()
