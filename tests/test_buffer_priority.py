import math

import numpy as np
import pytest

from pper.buffer import p2value, possibility, priorities, ranks


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
