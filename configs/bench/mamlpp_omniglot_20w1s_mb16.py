r"""Benchmark row: MAML++ Omniglot 20-way 1-shot, meta-batch 16 (issue 9).

Reference (PyTorch MAML++ code, CPU build, 2 threads, this kind of 2-core
machine): 6336 ms per meta-iteration second order, 3483 ms first order,
peak RSS 4313 MB. Shapes and settings: `configs/omniglot/mamlpp_20w1s.py`
unchanged (28x28x1, conv4 with 64 filters and max-pooling, 5 inner steps,
1 query image per class, MSL, per-step BN statistics and weights, LSLR),
meta-batch 16 instead of the config's 8; the benchmark times the
steady-state meta-step on a fixed meta-batch of real Omniglot tasks (data
loading excluded).

  python tools/benchmark.py --config=configs/bench/mamlpp_omniglot_20w1s_mb16.py
"""

from tfmetanas.experiment.defaults import bench_row, sibling_config


def get_config():
    config = sibling_config(__file__, "../omniglot/mamlpp_20w1s.py")
    config.meta.meta_batch_size = 16
    config.bench = bench_row(
        "MAML++ Omniglot 20-way 1-shot, meta-batch 16",
        {"second_order_ms": 6336.0, "first_order_ms": 3483.0, "peak_rss_mb": 4313.0},
    )
    return config
