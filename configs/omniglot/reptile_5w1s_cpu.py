r"""Reptile, Omniglot 5-way 1-shot, in a 60-minute CPU budget.

The CPU-budget variant of `reptile_5w1s.py` (paper: 97.68% after 100,000
iterations): the paper's inner loop (Adam, beta1 = 0, lr 1e-3, 5 steps of
mini-batches of 10 over 10-shot training tasks, 50 full-batch steps at test)
and meta-batch 5, with the meta step size annealed linearly from 1.0 over
6,000 iterations (the paper: over 100,000); training stops after 60 minutes of
wall time. Target here: at least 85% on 600 test tasks.

  tfmetanas-train --config=configs/omniglot/reptile_5w1s_cpu.py --workdir=/tmp/reptile_cpu
  tfmetanas-evaluate --workdir=/tmp/reptile_cpu --split=test
"""

from tfmetanas.experiment.defaults import base_config, small_convs_runtime


def get_config():
    config = base_config()
    config.data.source = "omniglot"
    config.data.split_scheme = "vinyals"
    config.data.ways, config.data.shots, config.data.queries = 5, 1, 1
    config.data.train_shots = 10
    config.model.bn.affine_group = "weights"
    config.inner.rule = "adam"
    config.inner.lr, config.inner.adam_beta1 = 1e-3, 0.0
    # The Reptile code keeps its inner Adam slots across tasks (only the model
    # variables are reset): carry the state over instead of restarting Adam.
    config.inner.persistent_state = True
    config.inner.steps, config.inner.eval_steps = 5, 50
    config.inner.batch_size = 10
    config.meta.algorithm = "reptile"
    config.meta.step_sizes = {"weights": 1.0}
    config.meta.schedule = "linear"
    config.meta.meta_batch_size = 5
    config.train.steps = 6_000
    config.train.time_limit_minutes = 60.0
    config.train.eval_every = 500
    config.train.log_every = 50
    small_convs_runtime(config)
    return config
