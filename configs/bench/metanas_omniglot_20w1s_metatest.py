r"""Benchmark row: METANAS Omniglot 20-way 1-shot meta-test, one task (issue 9).

Reference (the METANAS code, PyTorch CPU build, 2 threads, this kind of
2-core machine): 73.7 s per task, peak RSS 825 MB. One 20-way 1-shot test
task (1 query per class) adapted from the meta-parameters: 50 steps on
weights and architecture with the temperature annealed, then 50 steps on the
weights only, hard pruning at 0.01, and the pruned network scores the query
set (`MetaNAS.test_adapt`, what `tfmetanas-evaluate` runs per task); the
search network and task learner of `metanas_omniglot_20w_warmup.py`. Each
step takes 10 of the task's 20 support images, as the reference's setting
does (its `batch_size_test`; `metanas.eval_batch_size`). The benchmark times
one task per call (`bench.mode = "meta_test"`).

Where the reference's meta-test differs (its code at 305e307, read in
session 14): each of its 50 architecture steps runs a second forward and
backward pass, on another batch of 10, for the architecture gradient
(first-order DARTS on a copy of the network); it has no hard-pruning step,
but its forward passes drop mixing weights under 0.05 (`alpha_prune_threshold`).
Its images per step are drawn with replacement; ours are fixed shuffles.

  python tools/benchmark.py --config=configs/bench/metanas_omniglot_20w1s_metatest.py
"""

from tfmetanas.experiment.defaults import sibling_config


def get_config():
    config = sibling_config(__file__, "metanas_omniglot_20w_warmup.py")
    config.metanas.eval_arch_steps, config.metanas.eval_weight_steps = 50, 50
    config.metanas.eval_batch_size = 10  # the reference's batch_size_test
    config.bench.row = "METANAS Omniglot 20-way 1-shot meta-test, one task"
    config.bench.reference = {"first_order_ms": 73700.0, "peak_rss_mb": 825.0}
    config.bench.phase = "steady"
    config.bench.mode = "meta_test"
    return config
