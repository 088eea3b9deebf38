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
