import pytest

from pper.evaluation import pass_at_k


@pytest.mark.parametrize("n, c, k", [(1, 0, 5), (4, 4, 5), (0, 0, 1)])
def test_pass_at_k_refuses_fewer_samples_than_k(n, c, k):
    # (1, 0, 5) returned 1.0 before: one wrong sample claimed a certain pass@5
    with pytest.raises(ValueError, match=f"n={n}, k={k}"):
        pass_at_k(n, c, k)


@pytest.mark.parametrize("n, c, k", [(5, 6, 1), (5, -1, 1), (5, 0, 0)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_pass_at_k_at_the_edges():
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 1, 5) == 1.0 and pass_at_k(1, 1, 1) == 1.0


def test_pass_at_k_is_the_codex_estimator_everywhere_between_the_edges():
    from math import comb

    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k)), (n, c, k)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)
