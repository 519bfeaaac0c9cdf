"""Evolutionary and random search (evolution.py) on synthetic and oracle scores."""

import os

import numpy as np
import pytest

from tfmetanas.nas import evolution, oracle


def _score(arch):
    return float(sum(arch))  # best: all choices = max


def test_evolution_respects_constraint_and_improves():
    constraint = lambda a: sum(a) <= 20  # noqa: E731
    seen = []
    res = evolution.evolutionary_search(lambda a: seen.append(a) or _score(a), 8, 4,
                                        generations=10, population=10, offspring=10,
                                        constraint=constraint, seed=0)
    assert all(constraint(a) for a in seen)
    assert res.best_score == 20
    assert res.num_queries == len(seen) == len(set(seen))


def test_budget_and_stop():
    res = evolution.evolutionary_search(_score, 8, 4, generations=50, population=10,
                                        offspring=10, max_queries=25)
    assert res.num_queries == 25
    res = evolution.random_search(_score, 8, 4, num_samples=10_000, seed=1,
                                  stop_fn=lambda a, s: s >= 20)
    assert res.stopped_early and res.best_score >= 20


@pytest.mark.skipif(not os.environ.get(oracle.DATA_ENV),
                    reason=f"{oracle.DATA_ENV} unset: the NAS-Bench-201 table is not available")
def test_evolution_finds_good_cells_on_the_oracle():
    table = oracle.NB201Oracle()
    limit = 100e6
    res = evolution.evolutionary_search(
        lambda a: table.accuracy_of(a), 6, 5, generations=20, population=20, offspring=20,
        mutation_prob=0.2, constraint=lambda a: table.macs(a) <= limit, seed=0)
    assert table.macs(res.best_arch) <= limit
    best_limited = table.best(max_macs=limit)[1]
    assert res.best_score >= best_limited - 1.0
    assert res.best_score >= np.percentile(table.accuracy["cifar10"], 95)
