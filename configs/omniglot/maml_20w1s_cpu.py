r"""MAML (second order), Omniglot 20-way 1-shot: the baseline of `mamlpp_20w1s_cpu.py`.

The MAML++ paper's "local MAML" (its Table 1: 91.27%): the same conv4 (64
filters, max-pooling, BN with shared batch statistics), data (MAML++ split,
one query per class), meta-batch 8 and 5 inner SGD steps of lr 0.1 as
`mamlpp_20w1s_cpu.py`, with every MAML++ piece off: no per-step BN, fixed
inner learning rate, last-step loss only, second order from the start, and a
constant Adam 1e-3. Same iteration budget and time limit as the MAML++ run.

  tfmetanas-train --config=configs/omniglot/maml_20w1s_cpu.py --workdir=/tmp/maml_20w1s_cpu
  tfmetanas-evaluate --workdir=/tmp/maml_20w1s_cpu --split=test --num_tasks=600
"""

from tfmetanas.experiment.defaults import base_config, sibling_config, small_convs_runtime


def get_config():
    reference = sibling_config(__file__, "mamlpp_20w1s_cpu.py")
    config = base_config()
    config.data = reference.data
    config.model.filters = 64
    config.model.downsample = "max_pool"
    config.model.activation = "leaky_relu"
    config.inner.rule = "sgd"
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 5, 5, 0.1
    config.inner.bn_mode = "transductive"
    config.meta.algorithm = "maml"
    config.meta.meta_batch_size = 8
    config.meta.second_order = True
    config.meta.optimizer, config.meta.lr = "adam", 1e-3
    config.train = reference.train
    config.eval = reference.eval
    small_convs_runtime(config)
    return config
