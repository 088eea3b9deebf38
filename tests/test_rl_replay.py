"""P2Value replay of GRPO groups: the group draw distribution, and through a real GRPOTrainer step: replayed groups
keep their unit, get an importance ratio of 1 under an unchanged policy, and never enter the reward log."""

from __future__ import annotations

import numpy as np
import pytest

from pper.buffer import Group, GroupReplay, Member, ReplayBuffer
from pper.buffer.priority import p2value, priorities
from pper.tasks import AssertTests, Task
from tiny_grpo import tiny_grpo


def _group(task: str, rewards: list[float], logp: float) -> Group:
    members = tuple(Member(f"c{i}", (1, 2), (logp, logp), r) for i, r in enumerate(rewards))
    return Group(task, "prompt", (5, 6, 7), members)


def test_group_draws_follow_the_priority_distribution(tmp_path):
    scipy_stats = pytest.importorskip("scipy.stats")
    task = Task(id="t", prompt="p", tests=AssertTests(asserts=("assert True",)))
    specs = [([0.0, 1.0], -0.1), ([0.0, 0.5], -0.5), ([0.2, 0.4, 1.0], -2.0), ([1.0, 1.0], -0.1),  # ties: never
             ([0.0, 0.25], -1.0), ([0.5, 1.0], -0.2), ([0.0, 0.0], -0.3)]  # fmt: skip
    with ReplayBuffer(tmp_path / "b.sqlite") as buffer:
        buffer.add_tasks([task])
        ids = [buffer.add_group(_group("t", r, lp)) for r, lp in specs]
        for scheme, alpha, exponent in (("rank", 0.5, 1.0), ("proportional", 0.3, 2.0)):
            replay = GroupReplay(buffer, alpha, scheme, exponent, seed=1)
            eligible = [i for i, (r, _) in zip(ids, specs, strict=True) if np.std(r) > 0]
            value = np.array([p2value(np.exp(lp), np.mean(r), alpha) for r, lp in specs if np.std(r) > 0])
            expected = priorities(value, scheme) ** exponent
            expected /= expected.sum()
            draws = replay.sample(10_000)
            counts = np.array([draws.count(i) for i in eligible])
            assert counts.sum() == 10_000  # groups whose rewards tie are never drawn
            assert scipy_stats.chisquare(counts, expected * 10_000).pvalue > 0.01
            assert len(replay) == len(eligible)


def test_group_draws_depend_on_the_seed_and_step_only_so_a_resumed_run_draws_the_same(tmp_path):
    from pper.rl.replay import step_rng

    task = Task(id="t", prompt="p", tests=AssertTests(asserts=("assert True",)))
    with ReplayBuffer(tmp_path / "b.sqlite") as buffer:
        buffer.add_tasks([task])
        for k in range(6):
            buffer.add_group(_group("t", [0.0, 1.0 + k], -0.1 * (k + 1)))
        uninterrupted = GroupReplay(buffer, seed=3)
        for step in range(5):  # the draws of steps 0-4, which a run resumed at step 5 never makes
            uninterrupted.sample(4, step_rng(3, step, 0))
        later = [uninterrupted.sample(4, step_rng(3, 5, call)) for call in (0, 1)]
        resumed = GroupReplay(buffer, seed=3)
        assert [resumed.sample(4, step_rng(3, 5, call)) for call in (0, 1)] == later
        other_steps = {tuple(resumed.sample(4, step_rng(3, s, 0))) for s in range(6, 16)}
        assert len(other_steps) > 1  # and the draws do change from step to step


def test_a_fraction_of_the_groups_is_replayed_on_average_and_one_group_is_always_sampled():
    from pper.rl.replay import replayed_count

    assert [replayed_count(0.25, 2, u) for u in (0.0, 0.49, 0.5, 0.99)] == [1, 1, 0, 0]  # 0.5 groups on average
    assert [replayed_count(0.5, 4, u) for u in (0.0, 0.99)] == [2, 2]
    assert replayed_count(0.99, 2, 0.0) == 1 and replayed_count(0.0, 8, 0.0) == 0  # never all, never without f


def test_groups_sampled_after_a_checkpoint_are_dropped_on_resume(tmp_path):
    task = Task(id="t", prompt="p", tests=AssertTests(asserts=("assert True",)))
    with ReplayBuffer(tmp_path / "b.sqlite") as buffer:
        buffer.add_tasks([task])
        for step in (0, 1, 2, 2):
            buffer.add_group(Group("t", "p", (1,), (Member("c", (1,), (-0.1,), 1.0),), step))
        assert buffer.drop_groups(2) == 2 and buffer.group_count() == 2
        assert [buffer.group(i).step for i in (1, 2)] == [0, 1]


def _length_reward(completions, **kwargs):
    """A reward that differs within groups (the default model's programs mostly all fail): the completion's length
    in characters, mod 5."""
    return [float(len(c) % 5) for c in completions]


@pytest.mark.slow
def test_replayed_groups_through_a_real_grpo_trainer(tmp_path):
    pytest.importorskip("trl")
    import torch

    from pper.rl.config import GroupReplayConfig
    from pper.rl.replay import trainer_class

    setup = tiny_grpo(tmp_path, completion_length=8, steps=3)
    tasks = setup.tasks
    scored: list[list[float]] = []

    def reward(completions, **kwargs):
        scored.append(_length_reward(completions))
        return scored[-1]

    reward.__name__ = "length"
    seen: list[dict] = []

    class Capturing(trainer_class()):
        def _compute_loss(self, model, inputs):
            seen.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in inputs.items()})
            return super()._compute_loss(model, inputs)

    with ReplayBuffer(tmp_path / "b.sqlite") as buffer:
        buffer.add_tasks(tasks)
        trainer = Capturing(model=setup.model, reward_funcs=reward, args=setup.config, train_dataset=setup.data,
                            processing_class=setup.tokenizer, buffer=buffer, replay=GroupReplayConfig(fraction=0.5),
                            task_ids=setup.task_ids)  # fmt: skip
        trainer.train()
        stored = [buffer.group(i) for i in range(1, buffer.group_count() + 1)]
    # two groups of 2 per step; from the second step on, one of them is replayed when an eligible group is stored
    assert trainer.fresh_groups + trainer.replayed_groups == 6 and trainer.replayed_groups >= 1
    assert sum(map(len, scored)) == 2 * trainer.fresh_groups  # a replayed group is never scored again
    assert len(stored) == trainer.fresh_groups and all(len(g.members) == 2 for g in stored)  # the group is the unit
    assert all(g.task_id in {t.id for t in tasks} and g.prompt_ids for g in stored)
    logged = [h for h in trainer.state.log_history if "replay/groups" in h]
    assert [h["replay/groups"] for h in logged][0] == 0.0 and sum(h["replay/groups"] for h in logged) >= 1
    assert all(batch["completion_ids"].size(0) == 4 for batch in seen)  # 2 groups of 2 in every step
    for h, fresh in zip(logged, scored, strict=True):  # TRL's reward log: the mean over the fresh completions only
        assert h["reward"] == pytest.approx(np.mean(fresh), abs=1e-3)
    from trl.trainer.utils import nanstd

    members = {(g.prompt_ids, m.completion_ids): (g, m) for g in stored for m in g.members}
    for batch in seen:
        # an unchanged policy (learning rate 1e-12, float32): the importance ratio of a replayed row is 1; fresh rows
        # come marked NaN and take TRL's on-policy old log-probabilities (their own, detached) inside the loss
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        with torch.no_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.model, ids, mask, batch["completion_ids"].size(1), batch_size=ids.size(0)
            )
        old = batch.get("old_per_token_logps")
        replayed = [] if old is None else [i for i in range(4) if not torch.isnan(old[i]).any()]
        assert len(replayed) in (0, 2)  # a whole group or none
        for i in replayed:
            kept = batch["completion_mask"][i].bool()
            ratio = torch.exp(logps[i][kept] - old[i][kept])
            assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-3)
        # every row's advantage is its group's: (r - mean) / (std + 1e-4), as GRPO computes a fresh group's
        for i in range(4):
            prompt = tuple(t for t, m in zip(batch["prompt_ids"][i].tolist(), batch["prompt_mask"][i].tolist(),
                                             strict=True) if m)  # fmt: skip
            n = int(batch["completion_mask"][i].sum())
            group, member = members[prompt, tuple(batch["completion_ids"][i][:n].tolist())]
            rewards = torch.tensor([m.reward for m in group.members])
            expected = (member.reward - rewards.mean()) / (nanstd(rewards) + 1e-4)
            assert batch["advantages"][i].item() == pytest.approx(expected.item(), abs=1e-4)


@pytest.mark.parametrize(
    "rl, message",
    [
        ({"beta": 0.1}, "group replay needs rl.beta 0"),
        ({"use_vllm": True}, "does not store vLLM's sampling log-probabilities"),
        ({"reward": "coderl", "replay": {"fraction": 0.25, "priority": "proportional"}}, "coderl rewards go down"),
    ],
)
def test_group_replay_settings_that_cannot_run_are_refused_with_the_config(rl, message):
    from pper.config import validate_config
    from pper.errors import PperError

    with pytest.raises(PperError, match=message):
        validate_config({"rl": {"replay": {"fraction": 0.25}, **rl}})
    validate_config({"rl": {**rl, "replay": {**rl.get("replay", {}), "fraction": 0.0}}})  # fine without replay
    validate_config({"rl": {"reward": "coderl", "replay": {"fraction": 0.25, "priority": "rank"}}})
