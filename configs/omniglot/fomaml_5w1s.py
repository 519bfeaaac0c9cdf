r"""First-order MAML on Omniglot 5-way 1-shot (Finn et al. 2017, Table 1: 98.3%).

Finn et al.'s Omniglot setting: strided 4-conv (64 filters), 1 inner step(s)
of SGD with lr 0.4 in training, meta-batch 32, Adam 1e-3, 60,000 iterations;
Vinyals split (1200 train characters x 4 rotations, 423 test).

  tfmetanas-train --config=configs/omniglot/fomaml_5w1s.py --workdir=/tmp/fomaml_5w1s
  tfmetanas-evaluate --workdir=/tmp/fomaml_5w1s --split=test
"""

from tfmetanas.experiment.defaults import base_config, small_convs_runtime


def get_config():
    config = base_config()
    config.data.source = "omniglot"
    config.data.split_scheme = "vinyals"
    config.data.ways, config.data.shots, config.data.queries = 5, 1, 1
    config.model.downsample = "strided"
    config.model.activation = "relu"
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 1, 10, 0.4
    config.meta.algorithm = "maml"
    config.meta.second_order = False
    config.meta.meta_batch_size = 32
    config.train.steps = 60_000
    config.train.eval_every = 1000
    small_convs_runtime(config)
    return config
