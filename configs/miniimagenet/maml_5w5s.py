r"""MAML on mini-ImageNet 5-way 5-shot (Finn et al. 2017, Table 2: 63.11%).

4-conv with 32 filters and max-pooling, 5 inner SGD steps of lr 0.01 in training,
10 at test, 15 queries per class, meta-batch 2, Adam 1e-3, 60,000 iterations.

  tfmetanas-train --config=configs/miniimagenet/maml_5w5s.py --workdir=/tmp/mi_maml_5w5s
  tfmetanas-evaluate --workdir=/tmp/mi_maml_5w5s --split=test
"""

from tfmetanas.experiment.defaults import base_config


def get_config():
    config = base_config()
    config.data.source = "miniimagenet"
    config.data.image_size = 84
    config.data.rotations = False
    config.data.ways, config.data.shots, config.data.queries = 5, 5, 15
    config.model.filters = 32
    config.model.activation = "relu"
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 5, 10, 0.01
    config.meta.algorithm = "maml"
    config.meta.second_order = True
    config.meta.meta_batch_size = 2
    config.train.steps = 60_000
    config.train.eval_every = 1000
    return config
