r"""Benchmark row: METANAS Omniglot 20-way, meta-batch 10, warm-up phase (issue 9).

Reference (the METANAS code, PyTorch CPU build, 2 threads, this kind of
2-core machine): 60.6 s per meta-iteration (1.12 s per task step), peak RSS
1405 MB. Settings of the reference run (its `og_metanas` setting): the
search network of `configs/omniglot/metanas_20w1s.py` (4 cells, cells 2 and 4
reducing, 3 nodes, 28 channels, the 7 few-shot DARTS operations, input
subsets of k=2), 20-way tasks with 15 support images per class in
meta-training (`data.train_shots`) and 1 query per class, 5 task steps on
batches of 20 support images (`inner.batch_size`), Adam in the task learner,
first-order DARTS, Reptile over meta-batches of 10, t_min 0.05. Warm-up
phase: the architecture is frozen, the task learner adapts the weights only
(the first half of meta-training; the benchmark takes the options of
iteration 0). Not reproduced: DropPath 0.2 (the engine has no DropPath; it
is an element-wise mask on cell edges, well under 1% of the step's FLOPs).

  python tools/benchmark.py --config=configs/bench/metanas_omniglot_20w_warmup.py
"""

from tfmetanas.experiment.defaults import bench_row, sibling_config


def get_config():
    config = sibling_config(__file__, "../omniglot/metanas_20w1s.py")
    config.data.queries = 1  # the reference's q
    config.data.train_shots = 15  # the reference's n_train: support images per class in training
    config.inner.batch_size = 20  # support images per task step (the reference's batch_size)
    config.inner.steps = 5  # task steps in meta-training
    config.metanas.t_min = 0.05
    config.meta.meta_batch_size = 10
    config.bench = bench_row(
        "METANAS Omniglot 20-way, meta-batch 10, warm-up phase (weights only)",
        {"first_order_ms": 60600.0, "peak_rss_mb": 1405.0},
        orders=("first",),
        phase="warmup",
    )
    return config
