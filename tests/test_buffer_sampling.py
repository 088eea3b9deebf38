"""Prioritized sampling: positions are the cumulative-sum search of the uniforms, and draws follow
P(i) = p_i^e / sum p_k^e (chi-square)."""

import dataclasses

import numpy as np
import pytest
from scipy.stats import chisquare

from pper.buffer import PrioritizedSampler, Replay, ReplayConfig, ReplayTable, p2value, possibility, priorities

DRAWS = 200_000


def test_positions_are_the_cumulative_sum_search_of_the_uniforms():
    """The sampler maps each uniform u to the i with C_{i-1} <= u * C_{n-1} < C_i, C the cumulative sums of p^e."""
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 64, 1000):
        values = rng.random(n) * (rng.random(n) > 0.3)  # some zero priorities, some at the end
        values[0] = max(values[0], 0.1)
        sampler = PrioritizedSampler(values, exponent=0.8, seed=n)
        uniforms = np.random.default_rng(n).random(500)
        cdf = np.cumsum(values**0.8)
        assert sampler.total == pytest.approx(cdf[-1])
        drawn = sampler.sample(500)
        np.testing.assert_array_equal(drawn, np.searchsorted(cdf, uniforms * cdf[-1], side="right"))
        assert (values[drawn] > 0).all()


def test_invalid_priorities_are_refused():
    for bad in ([1.0, -0.5], [1.0, np.nan], [np.inf, 1.0]):
        with pytest.raises(ValueError, match="finite and non-negative"):
            PrioritizedSampler(np.array(bad))
    with pytest.raises(ValueError, match="exponent must be >= 0"):
        PrioritizedSampler(np.ones(3), exponent=-1)


def _table(n, seed=0):
    rng = np.random.default_rng(seed)
    return ReplayTable(
        program_id=np.arange(1, n + 1),
        task_id=np.array([f"t{i % 7}" for i in range(n)], dtype=object),
        logprob=-rng.random(n) * 40,
        num_tokens=rng.integers(5, 80, size=n),
        pass_rate=rng.choice([0.0, 0.25, 0.5, 1.0], size=n),
    )


def _expected(table, config):
    v = p2value(possibility(table.logprob, table.num_tokens, config.possibility), table.pass_rate, config.alpha)
    w = priorities(v, config.priority) ** config.exponent
    return w / w.sum()


def _chi_square_p(replay, expected):
    counts = np.bincount(replay.sampler.sample(DRAWS), minlength=len(expected))
    return chisquare(counts, expected * DRAWS).pvalue


@pytest.mark.parametrize("scheme", ["proportional", "rank", "uniform"])
@pytest.mark.parametrize("alpha, exponent", [(0.5, 1.0), (0.2, 0.6), (0.9, 2.0)])
def test_draw_frequencies_match_p_i(scheme, alpha, exponent):
    table = _table(40)
    config = ReplayConfig(priority=scheme, alpha=alpha, exponent=exponent)
    replay = Replay(table, config, seed=1234)
    expected = _expected(table, config)
    np.testing.assert_allclose(replay.probability, expected, rtol=1e-12)
    assert _chi_square_p(replay, expected) > 1e-3


@pytest.mark.parametrize("scheme", ["proportional", "rank"])
def test_the_chi_square_check_rejects_a_wrong_distribution(scheme):
    """Guard against a test that cannot fail: the same draws rejected against P(i) with another exponent."""
    table = _table(40)
    replay = Replay(table, ReplayConfig(priority=scheme, alpha=0.5, exponent=1.0), seed=1234)
    wrong = _expected(table, ReplayConfig(priority=scheme, alpha=0.5, exponent=1.3))
    assert _chi_square_p(replay, wrong) < 1e-6


def test_rank_priority_ties_get_equal_probability():
    table = _table(6)
    table = ReplayTable(
        table.program_id, table.task_id, np.zeros(6), np.full(6, 10), np.array([1.0, 0.5, 1.0, 0.0, 0.5, 1.0])
    )
    replay = Replay(table, ReplayConfig(priority="rank", alpha=0.0))
    # ranks 1, 4, 1, 6, 4, 1 -> p = 1, 1/4, 1, 1/6, 1/4, 1
    p = np.array([1, 1 / 4, 1, 1 / 6, 1 / 4, 1])
    np.testing.assert_allclose(replay.probability, p / p.sum())


def test_seeded_draws_are_reproducible_and_state_round_trips():
    table = _table(100)
    a = Replay(table, ReplayConfig(), seed=7)
    b = Replay(table, ReplayConfig(), seed=7)
    assert [d.program_id for d in a.sample(50)] == [d.program_id for d in b.sample(50)]
    state = a.sampler.state()
    first = a.sampler.sample(20)
    a.sampler.set_state(state)
    np.testing.assert_array_equal(a.sampler.sample(20), first)
    assert not np.array_equal(Replay(table, ReplayConfig(), seed=8).sampler.sample(50), b.sampler.sample(50))


def test_zero_priorities_are_never_drawn():
    s = PrioritizedSampler(np.array([0.0, 1.0, 0.0, 3.0, 0.0]), exponent=0.0, seed=0)  # e = 0: uniform over p > 0
    assert set(np.unique(s.sample(2000)).tolist()) == {1, 3}
    np.testing.assert_allclose(s.probabilities(), [0, 0.5, 0, 0.5, 0])
    with pytest.raises(ValueError, match="every priority is zero"):
        PrioritizedSampler(np.zeros(3)).sample(1)
    with pytest.raises(ValueError, match="every priority is zero"):
        PrioritizedSampler(np.zeros(0)).sample(1)


def test_draws_carry_their_p2value_and_probability():
    table = _table(10)
    replay = Replay(table, ReplayConfig(priority="proportional", alpha=0.25), seed=0)
    for d in replay.sample(5):
        i = int(np.flatnonzero(table.program_id == d.program_id)[0])
        assert d.task_id == table.task_id[i] and d.pass_rate == table.pass_rate[i]
        assert d.p2value == pytest.approx(0.25 * d.possibility + 0.75 * d.pass_rate)
        assert d.probability == pytest.approx(replay.probability[i])


def test_draws_carry_their_importance_weight():
    table = _table(30)
    plain = Replay(table, ReplayConfig(priority="rank"), seed=0)
    assert {d.weight for d in plain.sample(50)} == {1.0}  # beta 0: the paper's setting
    replay = Replay(table, ReplayConfig(priority="rank", importance_beta=0.6), seed=0)
    p = replay.probability
    expected = (len(p) * p) ** -0.6 / ((len(p) * p) ** -0.6).max()
    np.testing.assert_allclose(replay.weight, expected, rtol=1e-12)
    for d in replay.sample(50):
        i = int(np.flatnonzero(table.program_id == d.program_id)[0])
        assert d.weight == pytest.approx(expected[i]) and 0 < d.weight <= 1
    with pytest.raises(ValueError):
        ReplayConfig(importance_beta=-1)


def test_a_rescored_table_builds_a_replay_from_the_new_log_probabilities():
    """The trainer's rescore path: the same table with the current model's logprob and token counts."""
    table = _table(20)
    config = ReplayConfig(priority="proportional", alpha=1.0, rescore=True)
    logprob, tokens = -np.arange(1.0, 21.0), np.full(20, 4)
    rescored = Replay(dataclasses.replace(table, logprob=logprob, num_tokens=tokens), config, seed=0)
    assert rescored.table.logprob is logprob
    np.testing.assert_allclose(rescored.possibility, np.exp(logprob / 4))
    np.testing.assert_allclose(rescored.probability, np.exp(logprob / 4) / np.exp(logprob / 4).sum())
    assert not np.allclose(rescored.probability, Replay(table, config).probability)
    with pytest.raises(ValueError, match="logprob has shape"):
        Replay(dataclasses.replace(table, logprob=logprob[:5]), config)
    with pytest.raises(ValueError, match="logprob must be finite"):
        Replay(dataclasses.replace(table, logprob=np.full(20, np.nan)), config)
    with pytest.raises(ValueError, match="num_tokens must be >= 1"):
        Replay(dataclasses.replace(table, num_tokens=np.zeros(20, dtype=np.int64)), config)
    with pytest.raises(ValueError, match=r"pass_rate must be in \[0, 1\]"):
        Replay(dataclasses.replace(table, pass_rate=np.full(20, -0.5)), config)
