r"""First-order MAML, Omniglot 5-way 1-shot, in a 60-minute CPU budget.

The CPU-budget variant of `fomaml_5w1s.py` (paper: 98.3% after 60,000
iterations): 3 inner SGD steps of lr 0.4 (10 at test), 5 query images per class
in meta-training for a less noisy meta-gradient, meta-batch 16, max-pooling
conv4 with 64 filters; training stops after 60 minutes of wall time.
Target here: at least 85% on 600 test tasks (docs/results.md has the measured
number and learning curve).

  tfmetanas-train --config=configs/omniglot/fomaml_5w1s_cpu.py --workdir=/tmp/fomaml_cpu
  tfmetanas-evaluate --workdir=/tmp/fomaml_cpu --split=test
"""

from tfmetanas.experiment.defaults import base_config, small_convs_runtime


def get_config():
    config = base_config()
    config.data.source = "omniglot"
    config.data.split_scheme = "vinyals"
    config.data.ways, config.data.shots, config.data.queries = 5, 1, 5
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 3, 10, 0.4
    config.meta.algorithm = "maml"
    config.meta.second_order = False
    config.meta.meta_batch_size = 16
    config.train.steps = 20_000
    config.train.time_limit_minutes = 60.0
    config.train.eval_every = 250
    config.train.log_every = 50
    small_convs_runtime(config)
    return config
