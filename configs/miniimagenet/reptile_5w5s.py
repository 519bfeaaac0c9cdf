r"""Reptile on mini-ImageNet 5-way 5-shot (Nichol et al. 2018, Table 2, transductive: 65.99%).

Adam inner loop (beta1 = 0, lr 1e-3), 8 inner steps in training on tasks with
15 shots per class, 50 at test; meta step size 1.0 linearly annealed to 0,
meta-batch 5, 100,000 iterations; 4-conv with 32 filters.

  tfmetanas-train --config=configs/miniimagenet/reptile_5w5s.py --workdir=/tmp/mi_reptile_5w5s
  tfmetanas-evaluate --workdir=/tmp/mi_reptile_5w5s --split=test
"""

from tfmetanas.experiment.defaults import base_config


def get_config():
    config = base_config()
    config.data.source = "miniimagenet"
    config.data.image_size = 84
    config.data.rotations = False
    config.data.ways, config.data.shots, config.data.queries = 5, 5, 15
    config.data.train_shots = 15
    config.model.filters = 32
    config.model.activation = "relu"
    config.model.bn.affine_group = "weights"
    config.inner.rule = "adam"
    config.inner.lr, config.inner.adam_beta1 = 1e-3, 0.0
    # The Reptile code keeps its inner Adam slots across tasks (only the model
    # variables are reset): carry the state over instead of restarting Adam.
    config.inner.persistent_state = True
    config.inner.steps, config.inner.eval_steps = 8, 50
    config.inner.batch_size = 10  # paper: inner mini-batches of 10
    config.meta.algorithm = "reptile"
    config.meta.step_sizes = {"weights": 1.0}
    config.meta.schedule = "linear"
    config.meta.meta_batch_size = 5
    config.train.steps = 100_000
    config.train.eval_every = 2000
    return config
