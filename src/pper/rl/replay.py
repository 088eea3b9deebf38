"""P2Value replay of GRPO groups: a subclass of TRL's `GRPOTrainer` whose unit of storage and replay is the group.

Each step, TRL hands `_generate_and_score_completions` a generation batch of prompts, each repeated G
(`num_generations`) times in a row: one group per prompt. With `rl.replay.fraction` = f and n groups, the last
`replayed_count(f, n)` groups of the batch (f x n rounded up or down at random, so that f x n groups are replayed
on average; at most n - 1) are not sampled: in their place, as many groups are drawn from the run's
buffer by `buffer.GroupReplay` (the stored groups whose rewards differ, by the mean P2Value of their completions).
The rest is sampled and scored by TRL as usual, and then stored whole in the buffer (`ReplayBuffer.add_group`): the
prompt, the G completions, their rewards and the sampling policy's log-probability of every completion token.

A replayed group enters the batch with:
* its stored prompt and completion token ids (padded like TRL's: prompts on the left, completions on the right);
* advantages recomputed from its stored rewards exactly as GRPO computes a fresh group's: A_j = r_j - mean(r), divided
  by (std(r) + 1e-4) with TRL's `nanstd` when `scale_rewards` is "group" (with "batch", by its own group's std too,
  as the batch's is not the group's; "none": not divided);
* `old_per_token_logps` = the stored sampling log-probabilities, so the clipped importance ratio
  exp(log pi_theta - log pi_sampling) of TRL's loss corrects for the policy having moved since it was sampled (1 for
  an unchanged policy). The fresh rows keep TRL's on-policy rule (their old log-probabilities are the current ones,
  detached: a ratio of exactly 1): they are marked NaN in the batch and filled in `_compute_loss`. What is stored
  for a fresh group is its sampling log-probabilities from one extra no-grad forward pass (the cost of storing).

Log-probabilities are exact to float32 rounding only: under bfloat16 autocast (TRL's default; `pper rl` uses it
only where the device runs it natively, `training.precision`) the same tokens scored in another batch differ by up
to ~0.2 in log-probability, which the clipped ratio then sees as policy change.

Replayed groups are never scored again and never enter TRL's reward log: TRL logs rewards inside its own method,
before they are added. `replay/groups` in the log counts them per step. Limits: one reward function (its output is
what a group stores), `beta` = 0 (a replayed group has no reference log-probabilities), no vLLM importance
sampling correction (its fields are not stored), and one process. A resumed run first drops the groups stored
after its checkpoint's step (`ReplayBuffer.drop_groups`), which it samples again; the draws of each batch depend on
the seed and the step only (`step_rng`), so from the same buffer it replays what an uninterrupted run replays.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..buffer import Group, GroupReplay, Member, ReplayBuffer
from ..errors import PperError
from .config import GroupReplayConfig, group_replay_problem


def step_rng(seed: int, step: int, call: int) -> np.random.Generator:
    """The generator of the `call`-th batch made at optimizer step `step` (how many groups to replay, and which): a
    function of the run's seed and the position only, so a run resumed from a checkpoint draws what an uninterrupted
    run draws from the same buffer."""
    return np.random.default_rng([seed, step, call])


def replayed_count(fraction: float, groups: int, u: float) -> int:
    """How many of a batch's `groups` are replayed: floor(f x n) + 1 with probability frac(f x n) (`u` uniform in
    [0, 1)), so that f x n are replayed on average, capped at n - 1 (one group is always sampled)."""
    expected = fraction * groups
    count = int(expected) + (u < expected - int(expected))
    return max(0, min(count, groups - 1))


@functools.cache
def trainer_class() -> type:
    """`GroupReplayTrainer`, made on first use (importing trl only then)."""
    import torch
    import trl
    from trl.trainer.utils import nanstd

    class GroupReplayTrainer(trl.GRPOTrainer):
        """`GRPOTrainer` with prioritized group replay (see the module docstring)."""

        def __init__(
            self, *args: Any, buffer: ReplayBuffer, replay: GroupReplayConfig, task_ids: dict[str, str],
            model_name: str = "", **kwargs: Any,
        ):  # fmt: skip
            """`buffer`: where groups are stored and drawn from; `task_ids`: prompt text -> task id (the dataset's
            rows); the rest as `GRPOTrainer`. The one reward function's outputs are recorded for storage."""
            reward = kwargs.get("reward_funcs")
            if isinstance(reward, list):
                if len(reward) != 1:
                    raise PperError("group replay stores one reward per completion: give one reward function")
                reward = reward[0]
            self._scores: list[float] = []

            def recorded(**inputs: Any) -> list[float]:
                out = list(reward(**inputs))
                self._scores = out
                return out

            recorded.__name__ = getattr(reward, "__name__", "reward")
            kwargs["reward_funcs"] = recorded
            super().__init__(*args, **kwargs)
            problem = group_replay_problem(replay.fraction, self.beta, self.use_vllm)
            if problem:
                raise PperError(problem)
            self.buffer, self.replay, self.task_ids, self.model_name = buffer, replay, task_ids, model_name
            self.groups = GroupReplay(buffer, replay.alpha, replay.priority, replay.exponent, self.args.seed)
            self.replayed_groups = 0  # over the run: groups drawn from the buffer
            self.fresh_groups = 0
            self._calls = (-1, 0)  # (optimizer step, batches made at it)
            self._fresh_old: dict[str, Any] | None = None
            self.batch_rows: list[tuple[str | None, str]] = []

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            g = self.num_generations
            n_groups = len(inputs) // g
            step = self.state.global_step
            self._calls = (step, self._calls[1] + 1 if self._calls[0] == step else 0)
            rng = step_rng(self.args.seed, *self._calls)
            wanted = replayed_count(self.replay.fraction, n_groups, rng.random())
            drawn = self.groups.sample(wanted, rng) if wanted > 0 else []
            fresh = inputs[: (n_groups - len(drawn)) * g]
            self._scores = []
            out = super()._generate_and_score_completions(fresh)
            sampling = self._sampling_logps(out)
            self._store(fresh, out, sampling)
            self.fresh_groups += len(fresh) // g
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["replay/groups"].append(float(len(drawn)))
            groups = [self.buffer.group(i) for i in drawn]
            # (task id, prompt) of each row of the batch returned, replayed rows last (what `pper.rl.dense` scores)
            self.batch_rows = [(x.get("task_id") or self.task_ids.get(x["prompt"]), x["prompt"]) for x in fresh] + [
                (gr.task_id, gr.prompt) for gr in groups for _ in gr.members
            ]
            if not drawn:
                return out
            self.replayed_groups += len(drawn)
            return self._append(out, sampling, groups)

        def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> Any:
            old = inputs.get("old_per_token_logps")
            self._fresh_old = inputs if old is not None and torch.isnan(old).any() else None
            try:
                return super()._compute_loss(model, inputs)
            finally:
                self._fresh_old = None

        def _get_per_token_logps_and_entropies(self, model: Any, *args: Any, **kwargs: Any) -> Any:
            out = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
            pending, self._fresh_old = self._fresh_old, None
            if pending is not None:  # the loss's own pass: the fresh rows' old log-probabilities are these, detached
                old = pending["old_per_token_logps"]
                pending["old_per_token_logps"] = torch.where(torch.isnan(old), out[0].detach(), old)
            return out

        def _sampling_logps(self, out: dict[str, Any]) -> Any:
            """The sampling policy's log-probability of each fresh completion token: TRL's old log-probs where it
            computed them, else one no-grad forward pass of the model that just sampled them."""
            if out.get("old_per_token_logps") is not None:
                return out["old_per_token_logps"]
            ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
            mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
            with torch.no_grad():
                logps, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, ids, mask, out["completion_ids"].size(1), batch_size=ids.size(0)
                )
            return logps

        def _store(self, fresh: list[dict[str, Any]], out: dict[str, Any], sampling: Any) -> None:
            g = self.num_generations
            if len(self._scores) != len(fresh):
                raise PperError(f"{len(self._scores)} rewards recorded for {len(fresh)} completions")
            pad = self.processing_class.pad_token_id
            for start in range(0, len(fresh), g):
                prompt = fresh[start]["prompt"]
                prompt_ids = [t for t, m in zip(out["prompt_ids"][start].tolist(), out["prompt_mask"][start].tolist(),
                                                strict=True) if m]  # fmt: skip
                members = []
                for row in range(start, start + g):
                    n = int(out["completion_mask"][row].sum().item())
                    ids = out["completion_ids"][row][:n].tolist()
                    text = self.processing_class.decode([t for t in ids if t != pad], skip_special_tokens=True)
                    members.append(
                        Member(text, tuple(ids), tuple(sampling[row][:n].tolist()), float(self._scores[row]))
                    )
                task_id = fresh[start].get("task_id") or self.task_ids.get(prompt)
                if task_id is None:
                    raise PperError("a GRPO prompt with no task_id: the dataset needs a task_id column")
                self.buffer.add_group(
                    Group(task_id, prompt, tuple(prompt_ids), tuple(members), self.state.global_step, self.model_name)
                )

        def _append(self, out: dict[str, Any], sampling: Any, groups: list[Group]) -> dict[str, Any]:
            """`out` with the replayed groups' rows added after the fresh ones."""
            device, pad = out["prompt_ids"].device, self.processing_class.pad_token_id
            prompts = [list(gr.prompt_ids) for gr in groups for _ in gr.members]
            completions = [list(m.completion_ids) for gr in groups for m in gr.members]
            logps = [list(m.logps) for gr in groups for m in gr.members]
            p_len = max(out["prompt_ids"].size(1), max(len(p) for p in prompts))
            c_len = max(out["completion_ids"].size(1), max((len(c) for c in completions), default=0), 1)

            def left(t: Any, width: int, value: float) -> Any:
                return torch.nn.functional.pad(t, (width - t.size(1), 0), value=value)

            def right(t: Any, width: int, value: float) -> Any:
                return torch.nn.functional.pad(t, (0, width - t.size(1)), value=value)

            def rows(seqs: list[list], width: int, value: float, on_left: bool, dtype: Any) -> Any:
                padded = [
                    ([value] * (width - len(s)) + s) if on_left else (s + [value] * (width - len(s))) for s in seqs
                ]
                return torch.tensor(padded, dtype=dtype, device=device)

            def mask(seqs: list[list], width: int, on_left: bool) -> Any:
                return rows([[1] * len(s) for s in seqs], width, 0, on_left, out["prompt_mask"].dtype)

            rewards = torch.tensor([m.reward for gr in groups for m in gr.members], dtype=torch.float32, device=device)
            size = len(groups[0].members)
            grouped = rewards.view(-1, size)
            advantages = (grouped - grouped.mean(dim=1, keepdim=True)).view(-1)
            if self.scale_rewards != "none":
                advantages = advantages / (nanstd(grouped, dim=1).repeat_interleave(size) + 1e-4)
            merged = {
                "prompt_ids": torch.cat([left(out["prompt_ids"], p_len, pad),
                                         rows(prompts, p_len, pad, True, out["prompt_ids"].dtype)]),
                "prompt_mask": torch.cat([left(out["prompt_mask"], p_len, 0), mask(prompts, p_len, True)]),
                "completion_ids": torch.cat([right(out["completion_ids"], c_len, pad),
                                             rows(completions, c_len, pad, False, out["completion_ids"].dtype)]),
                "completion_mask": torch.cat([right(out["completion_mask"], c_len, 0),
                                              mask(completions, c_len, False)]),
                "advantages": torch.cat([out["advantages"], advantages.to(out["advantages"].dtype)]),
                # fresh rows: NaN, filled with the current log-probabilities in _compute_loss (TRL's on-policy rule)
                "old_per_token_logps": torch.cat([right(torch.full_like(sampling, float("nan")), c_len, float("nan")),
                                                  rows(logps, c_len, 0.0, False, sampling.dtype)]),
            }  # fmt: skip
            merged["num_items_in_batch"] = merged["completion_mask"].sum()
            unknown = {k for k, v in out.items() if v is not None and k not in merged}
            if unknown:
                raise PperError(f"group replay cannot extend TRL's batch field(s) {sorted(unknown)}")
            return merged

    return GroupReplayTrainer
