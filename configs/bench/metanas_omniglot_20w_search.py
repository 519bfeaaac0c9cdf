r"""Benchmark row: METANAS Omniglot 20-way, meta-batch 10, after warm-up (issue 9).

Reference (the METANAS code, PyTorch CPU build, 2 threads, this kind of
2-core machine): 104.5 s per meta-iteration, peak RSS 1371 MB. The settings
of `metanas_omniglot_20w_warmup.py` (the reference's `og_metanas` run), after
the warm-up: the task learner adapts weights and architecture at every task
step (the benchmark takes the options of the last iteration), and Reptile
meta-updates both. The engine takes both gradients from one forward and
backward pass on the step's batch (docs/metanas.md); the reference code
runs an architecture step and a weight step. Not reproduced: DropPath 0.2.

  python tools/benchmark.py --config=configs/bench/metanas_omniglot_20w_search.py
"""

from tfmetanas.experiment.defaults import sibling_config


def get_config():
    config = sibling_config(__file__, "metanas_omniglot_20w_warmup.py")
    config.bench.row = (
        "METANAS Omniglot 20-way, meta-batch 10, after warm-up (weights and architecture)"
    )
    config.bench.reference = {"first_order_ms": 104500.0, "peak_rss_mb": 1371.0}
    config.bench.phase = "steady"
    return config
