"""tools/ranking_study.py: the table part on hand-made reference and supernet results."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfmetanas.nas import ranking

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "ranking_study.py")
# Six NB201 cells (op index per edge); the last one connects no path to the output.
ARCHS = [[1, 1, 1, 1, 1, 1], [2, 2, 2, 2, 2, 2], [3, 3, 3, 3, 3, 3], [1, 2, 3, 4, 1, 2],
         [4, 4, 4, 4, 4, 4], [0, 0, 0, 0, 0, 0]]
CONFIG = {"model": {"channels": 8, "cells_per_stage": 1},
          "data": {"image_size": 16, "num_classes": 10}}


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _write(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f)


@pytest.mark.parametrize("flip", [False, True], ids=["agrees", "reversed"])
def test_table_correlates_supernets_with_the_averaged_reference(tmp_path, flip):
    out = str(tmp_path)
    seed0 = np.array([0.10, 0.20, 0.30, 0.40, 0.50, 0.05])
    seed1 = seed0 + np.array([0.02, -0.01, 0.0, 0.03, -0.02, 0.0])
    for seed, acc in ((0, seed0), (1, seed1)):
        _write(os.path.join(out, f"reference_seed{seed}.json"), {
            "seed": seed, "config": CONFIG,
            "archs": [{"arch": a, "accuracy": float(x)} for a, x in zip(ARCHS, acc)]})
    mean = (seed0 + seed1) / 2
    predicted = -mean if flip else 0.5 * mean  # same order as the reference, or reversed
    _write(os.path.join(out, "supernet_k2_seed0", "rank.json"), {
        "archs": [{"arch": a, "accuracy": float(p), "loss": float(1 - p)}
                  for a, p in zip(ARCHS, predicted)]})
    result = _run("table", f"--out_dir={out}")
    assert result.returncode == 0, result.stderr
    with open(os.path.join(out, "table.json")) as f:
        table = json.load(f)
    assert table["num_archs"] == 6 and table["num_connected"] == 5
    (run,) = table["runs"]
    assert (run["k"], run["seed"]) == ("2", 0)
    expected = ranking.correlations(predicted, mean)
    assert run["kendall_tau_a"] == pytest.approx(-1.0 if flip else 1.0)
    assert run["spearman_rho"] == pytest.approx(expected["spearman_rho"])
    assert run["by_loss"]["kendall_tau_a"] == pytest.approx(-1.0 if flip else 1.0)
    # The averaged reference is written for `search.rank.reference`.
    with open(os.path.join(out, "reference.json")) as f:
        reference = json.load(f)
    np.testing.assert_allclose([e["accuracy_mean"] for e in reference["archs"]], mean)
    assert table["summary"]["k2"]["kendall_tau_a"]["n"] == 1


def test_bad_invocations_get_clear_errors(tmp_path):
    missing = _run("table", f"--out_dir={tmp_path}")
    # The package's error as one line (cli.app_main), not a traceback.
    assert missing.returncode == 2
    assert "ranking_study.py: error:" in missing.stderr and "Traceback" not in missing.stderr
    assert "run the reference part first" in missing.stderr
    no_part = _run(f"--out_dir={tmp_path}")
    assert no_part.returncode != 0 and "Name one part" in no_part.stderr
    no_dir = _run("table")
    assert no_dir.returncode != 0 and "out_dir" in no_dir.stderr
