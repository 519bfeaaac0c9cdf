"""Tabular NAS-Bench-201 oracle (oracle.py)."""

import os

import numpy as np
import pytest

from tfmetanas import errors
from tfmetanas.nas import nb201, oracle

needs_data = pytest.mark.skipif(
    not os.environ.get(oracle.DATA_ENV),
    reason=f"{oracle.DATA_ENV} unset: the NAS-Bench-201 table is not available")


def test_missing_table_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.delenv(oracle.DATA_ENV, raising=False)
    with pytest.raises(errors.DataError, match=oracle.DATA_ENV):
        oracle.NB201Oracle()
    with pytest.raises(errors.DataError, match="not found"):
        oracle.NB201Oracle(str(tmp_path / "missing.csv"))


def test_benchmark_macs_vectorised_matches_analytic():
    archs = nb201.all_archs()[::97]
    table = oracle.benchmark_macs(archs)
    assert table.max() <= 220_119_680 and table.min() >= 7_783_040
    from tfmetanas.nas import flops
    for a, m in zip(archs, table):
        assert flops.nb201_cost(tuple(a)).macs == m


@needs_data
def test_lookups():
    table = oracle.NB201Oracle()
    first = table.strings[0]
    assert table.accuracy_of(0) == table.accuracy_of(first) == pytest.approx(85.8633, abs=1e-3)
    assert max(table.accuracy["cifar10"]) == pytest.approx(94.3733, abs=1e-3)
    threshold = table.top_fraction_threshold(0.01)
    assert (table.accuracy["cifar10"] >= threshold).sum() >= 157
    assert table.accuracy_of(first, "cifar100") == pytest.approx(52.9133, abs=1e-3)
    with pytest.raises(errors.ConfigError, match="valid"):
        table.accuracy_of(0, "cifar11")
    np.testing.assert_array_equal(table.macs_table()[:5],
                                  [table.macs(table.arch(i)) for i in range(5)])
