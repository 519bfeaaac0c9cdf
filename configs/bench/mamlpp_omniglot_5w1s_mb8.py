r"""Benchmark row: MAML++ Omniglot 5-way 1-shot, meta-batch 8 (issue 9).

Reference (PyTorch MAML++ code, CPU build, 2 threads, this kind of 2-core
machine): 1357 ms per meta-iteration second order, 653 ms first order,
peak RSS 866 MB. Shapes and settings: `configs/omniglot/mamlpp_5w1s.py`
unchanged (28x28x1, conv4 with 64 filters and max-pooling, 5 inner steps,
1 query image per class, MSL, per-step BN statistics and weights, LSLR,
meta-batch 8); the benchmark times the steady-state meta-step on a fixed
meta-batch of real Omniglot tasks (data loading excluded).

  python tools/benchmark.py --config=configs/bench/mamlpp_omniglot_5w1s_mb8.py
"""

from tfmetanas.experiment.defaults import bench_row, sibling_config


def get_config():
    config = sibling_config(__file__, "../omniglot/mamlpp_5w1s.py")
    config.meta.meta_batch_size = 8
    config.bench = bench_row(
        "MAML++ Omniglot 5-way 1-shot, meta-batch 8",
        {"second_order_ms": 1357.0, "first_order_ms": 653.0, "peak_rss_mb": 866.0},
    )
    return config
