r"""Reptile on Omniglot 5-way 1-shot (Nichol et al. 2018, Table 1, transductive: 97.68%).

The Reptile paper's Omniglot setting: Adam inner loop (beta1 = 0, lr 1e-3),
5 inner steps in training on tasks with 10 shots per class, 50 at test;
meta step size 1.0 linearly annealed to 0, meta-batch 5, 100,000 iterations.
BN gamma/beta are adapted and meta-learned like the other weights.

  tfmetanas-train --config=configs/omniglot/reptile_5w1s.py --workdir=/tmp/reptile_5w1s
  tfmetanas-evaluate --workdir=/tmp/reptile_5w1s --split=test
"""

from tfmetanas.experiment.defaults import base_config, small_convs_runtime


def get_config():
    config = base_config()
    config.data.source = "omniglot"
    config.data.split_scheme = "vinyals"
    config.data.ways, config.data.shots, config.data.queries = 5, 1, 1
    config.data.train_shots = 10  # Reptile trains on larger support sets
    config.model.bn.affine_group = "weights"
    config.inner.rule = "adam"
    config.inner.lr, config.inner.adam_beta1 = 1e-3, 0.0
    # The Reptile code keeps its inner Adam slots across tasks (only the model
    # variables are reset): carry the state over instead of restarting Adam.
    config.inner.persistent_state = True
    config.inner.steps, config.inner.eval_steps = 5, 50
    config.inner.batch_size = 10  # paper: inner mini-batches of 10
    config.meta.algorithm = "reptile"
    config.meta.step_sizes = {"weights": 1.0}
    config.meta.schedule = "linear"
    config.meta.meta_batch_size = 5
    config.train.steps = 100_000
    config.train.eval_every = 2000
    small_convs_runtime(config)
    return config
