"""Rank correlations against hand-computed values (ranking.py)."""

import numpy as np
import pytest

from tfmetanas.nas import ranking


def test_kendall_hand_example():
    # x = 1,2,3,4; y = 1,3,2,4: pairs (2,3) discordant, the other 5 concordant.
    x, y = [1, 2, 3, 4], [1, 3, 2, 4]
    assert ranking.concordance(x, y)[:2] == (5, 1)
    assert ranking.kendall_tau_a(x, y) == pytest.approx(4 / 6)
    assert ranking.kendall_tau_b(x, y) == pytest.approx(4 / 6)


def test_kendall_with_ties():
    # x = 1,2,2,3; y = 1,2,3,3: C=4, D=0, one tie in x only, one in y only.
    x, y = [1, 2, 2, 3], [1, 2, 3, 3]
    c, d, tx, ty, n = ranking.concordance(x, y)
    assert (c, d, tx, ty, n) == (4, 0, 1, 1, 6)
    assert ranking.kendall_tau_a(x, y) == pytest.approx(4 / 6)
    assert ranking.kendall_tau_b(x, y) == pytest.approx(4 / np.sqrt(5 * 5))


def test_spearman_hand_example():
    # d = (0, 1, -1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8.
    assert ranking.spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert ranking.spearman_rho([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    np.testing.assert_allclose(ranking.rankdata([10, 20, 20, 5]), [2, 3.5, 3.5, 1])


def test_perfect_and_reversed():
    x = np.arange(10.0)
    assert ranking.kendall_tau_a(x, x) == 1.0
    assert ranking.kendall_tau_b(x, -x) == -1.0
