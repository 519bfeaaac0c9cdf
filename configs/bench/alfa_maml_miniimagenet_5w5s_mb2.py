r"""Benchmark row: ALFA+MAML mini-ImageNet 5-way 5-shot, meta-batch 2 (issue 9).

Reference (PyTorch ALFA code, CPU build, 2 threads, this kind of 2-core
machine): 9204 ms per meta-iteration second order, 4401 ms first order, peak
RSS 4049 MB. Shapes and settings: `configs/miniimagenet/alfa_maml_5w5s.py`
unchanged (84x84x3, 4-conv with 48 filters and max-pooling, 5 inner steps,
15 queries per class, the ALFA generator g_phi on, meta-batch 2). Tasks come
from random images of the same shapes (`bench.synthetic_data`).

  python tools/benchmark.py --config=configs/bench/alfa_maml_miniimagenet_5w5s_mb2.py
"""

from tfmetanas.experiment.defaults import bench_row, sibling_config


def get_config():
    config = sibling_config(__file__, "../miniimagenet/alfa_maml_5w5s.py")
    config.meta.meta_batch_size = 2
    config.bench = bench_row(
        "ALFA+MAML mini-ImageNet 5-way 5-shot, meta-batch 2",
        {"second_order_ms": 9204.0, "first_order_ms": 4401.0, "peak_rss_mb": 4049.0},
        synthetic_data=True,
    )
    return config
