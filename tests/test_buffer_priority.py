import math

import numpy as np
import pytest

from pper.buffer import importance_weights, p2value, possibility, priorities, ranks


def test_possibility_is_the_geometric_mean_token_probability_by_default():
    logp, tokens = np.array([-10.0, -2.0, 0.0]), np.array([20, 4, 7])
    np.testing.assert_allclose(possibility(logp, tokens), [math.exp(-0.5), math.exp(-0.5), 1.0])
    np.testing.assert_allclose(possibility(logp, tokens, "product"), [math.exp(-10), math.exp(-2), 1.0])
    with pytest.raises(ValueError, match="possibility must be one of"):
        possibility(logp, tokens, "arithmetic")


def test_p2value_pinned():
    # P2Value = alpha * P + (1 - alpha) * pass_rate (paper eq. 5)
    P = possibility(np.array([-6.0, -1.0]), np.array([12, 10]))  # exp(-0.5), exp(-0.1)
    rate = np.array([0.75, 0.0])
    np.testing.assert_allclose(p2value(P, rate, 0.3), [0.3 * 0.6065306597 + 0.7 * 0.75, 0.3 * 0.9048374180])
    np.testing.assert_allclose(p2value(P, rate, 0.0), rate)
    np.testing.assert_allclose(p2value(P, rate, 1.0), P)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        p2value(P, rate, 1.5)


def test_ranks_highest_first_and_ties_share_the_best_rank():
    assert ranks(np.array([0.5, 0.9, 0.5, 0.1, 0.9])).tolist() == [3, 1, 3, 5, 1]
    assert ranks(np.array([0.2, 0.2, 0.2])).tolist() == [1, 1, 1]
    assert ranks(np.array([])).tolist() == []


def test_priority_schemes():
    values = np.array([0.5, 0.9, 0.5, 0.0])
    np.testing.assert_allclose(priorities(values, "rank"), [1 / 2, 1, 1 / 2, 1 / 4])
    np.testing.assert_allclose(priorities(values, "proportional"), values)
    np.testing.assert_allclose(priorities(values, "uniform"), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="priority must be one of"):
        priorities(values, "greedy")
    with pytest.raises(ValueError, match="must be non-negative"):  # the replay's sampler relies on this check
        priorities(np.array([0.5, -0.1]), "proportional")


def test_importance_weights_beta_zero_is_one_for_every_program():
    p = np.array([0.5, 0.3, 0.2, 0.0])
    np.testing.assert_array_equal(importance_weights(p, 0.0), [1.0, 1.0, 1.0, 1.0])


def test_importance_weights_hand_computed_and_max_normalised():
    # N = 3, beta = 0.5: (N P)^-beta = (1.5, 0.9, 0.6)^-0.5; the max is that of the least likely program.
    p = np.array([0.5, 0.3, 0.2])
    raw = (3 * p) ** -0.5
    expected = raw / raw.max()
    np.testing.assert_allclose(importance_weights(p, 0.5), expected, rtol=1e-12)
    np.testing.assert_allclose(importance_weights(p, 0.5), [(0.2 / 0.5) ** 0.5, (0.2 / 0.3) ** 0.5, 1.0])
    assert importance_weights(p, 1.0).max() == 1.0
    # uniform draws need no correction whatever beta is
    np.testing.assert_allclose(importance_weights(np.full(4, 0.25), 0.7), np.ones(4))
    # a program that is never drawn gets no weight, and the others are normalised without it
    np.testing.assert_allclose(importance_weights(np.array([0.75, 0.25, 0.0]), 1.0), [1 / 3, 1.0, 0.0])
    with pytest.raises(ValueError, match="importance_beta must be >= 0"):
        importance_weights(p, -0.1)


def test_p2value_with_a_prm_term():
    from pper.buffer import p2value

    # alpha * P + (1 - alpha) * ((1 - w) * pass_rate + w * S); a program without a score (NaN) keeps its pass rate
    got = p2value(np.array([0.2, 0.2, 0.4]), np.array([0.0, 0.0, 0.5]), 0.5, np.array([0.9, 0.1, np.nan]), 0.4)
    np.testing.assert_allclose(got, [0.5 * 0.2 + 0.5 * 0.4 * 0.9, 0.5 * 0.2 + 0.5 * 0.4 * 0.1, 0.5 * 0.4 + 0.5 * 0.5])
    plain = p2value(np.array([0.2]), np.array([0.3]), 0.5)
    assert p2value(np.array([0.2]), np.array([0.3]), 0.5, np.array([0.9]), 0.0) == plain  # w = 0: the paper's
    with pytest.raises(ValueError, match="prm_weight"):
        p2value(np.array([0.2]), np.array([0.3]), 0.5, np.array([0.9]), 1.5)
