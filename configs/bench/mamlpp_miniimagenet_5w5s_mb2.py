r"""Benchmark row: MAML++ mini-ImageNet 5-way 5-shot, meta-batch 2 (issue 9).

Reference (PyTorch MAML++ code, CPU build, 2 threads, this kind of 2-core
machine): 13230 ms per meta-iteration second order, peak RSS 7891 MB (no
first-order figure). Shapes and settings: `configs/miniimagenet/mamlpp_5w5s.py`
unchanged (84x84x3, conv4 with 48 filters and max-pooling, 5 inner steps,
15 queries per class, MSL, per-step BN, LSLR, meta-batch 2). mini-ImageNet is
not needed: the benchmark draws tasks from random images of the same shapes
(`bench.synthetic_data`), and the meta-step's cost does not depend on pixels.

  python tools/benchmark.py --config=configs/bench/mamlpp_miniimagenet_5w5s_mb2.py
"""

from tfmetanas.experiment.defaults import bench_row, sibling_config


def get_config():
    config = sibling_config(__file__, "../miniimagenet/mamlpp_5w5s.py")
    config.meta.meta_batch_size = 2
    config.bench = bench_row(
        "MAML++ mini-ImageNet 5-way 5-shot, meta-batch 2",
        {"second_order_ms": 13230.0, "peak_rss_mb": 7891.0},
        orders=("second",),
        synthetic_data=True,
    )
    return config
