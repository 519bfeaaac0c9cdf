r"""MAML on Omniglot 20-way 1-shot (Finn et al. 2017, Table 1: 95.8%).

Finn et al.'s Omniglot setting: strided 4-conv (64 filters), 5 inner step(s)
of SGD with lr 0.1 in training, meta-batch 16, Adam 1e-3, 60,000 iterations;
Vinyals split (1200 train characters x 4 rotations, 423 test).

  tfmetanas-train --config=configs/omniglot/maml_20w1s.py --workdir=/tmp/maml_20w1s
  tfmetanas-evaluate --workdir=/tmp/maml_20w1s --split=test
"""

from tfmetanas.experiment.defaults import base_config, small_convs_runtime


def get_config():
    config = base_config()
    config.data.source = "omniglot"
    config.data.split_scheme = "vinyals"
    config.data.ways, config.data.shots, config.data.queries = 20, 1, 1
    config.model.downsample = "strided"
    config.model.activation = "relu"
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 5, 10, 0.1
    config.meta.algorithm = "maml"
    config.meta.second_order = True
    config.meta.meta_batch_size = 16
    config.train.steps = 60_000
    config.train.eval_every = 1000
    small_convs_runtime(config)
    return config
