"""tools/plot_cells.py on the genotypes file `tfmetanas-evaluate` writes for METANAS."""

import json
import os
import subprocess
import sys

import numpy as np

from tfmetanas.nas import genotype

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "plot_cells.py")
PRIMS = ("max_pool_3x3", "skip_connect", "conv_3x3")
PNG = b"\x89PNG\r\n\x1a\n"


def _genotype(first_op):
    """A 2-node cell whose edges keep only `first_op` (other weights underflow)."""
    alpha = np.full((5, 3), -100.0, np.float32)
    alpha[:, first_op] = 1.0
    betas = [np.zeros(1, np.float32), np.zeros(3, np.float32)]
    return genotype.derive_genotype(alpha, betas, alpha, betas, temperature=0.1,
                                    threshold=0.01, primitives=PRIMS)


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_plots_cells_meta_architecture_and_histogram(tmp_path):
    a, b = _genotype(0), _genotype(2)
    assert a.normal.structure() != b.normal.structure()
    # The evaluator's layout (MetaNAS.summarize_records): a meta line, then one per task.
    lines = [{"task": "meta", "params": 999, "genotype": b.to_dict()}]
    for i, (g, params) in enumerate([(a, 1200), (a, 1200), (b, 3100)]):
        lines.append({"task": i, "params": params, "genotype": g.to_dict(),
                      "unpruned_metric": 0.5})
    path = tmp_path / "genotypes_test.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "cells"
    proc = _run(f"--genotypes={path}", f"--out={out}", "--top=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads((out / "cell_counts.json").read_text())
    # The meta line is not a task: 2 of 3 tasks share the most common cell.
    assert [c["count"] for c in counts["normal"]] == [2, 1]
    assert genotype.Genotype.from_dict(counts["normal"][0]["genotype"]) == a
    for name in ("normal_top0.png", "normal_top1.png", "reduce_top0.png",
                 "meta_architecture.png", "param_histogram.png"):
        assert (out / name).read_bytes()[:8] == PNG, name


def test_bad_files_give_a_clear_message(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": 0, "params": 3}\n')
    proc = _run(f"--genotypes={bad}", f"--out={tmp_path / 'o'}")
    assert proc.returncode != 0 and "bad.jsonl:1: not a genotype record" in proc.stderr
    proc = _run(f"--genotypes={tmp_path / 'missing.jsonl'}", f"--out={tmp_path / 'o'}")
    assert proc.returncode != 0 and "Cannot read" in proc.stderr
    assert not (tmp_path / "o").exists()
