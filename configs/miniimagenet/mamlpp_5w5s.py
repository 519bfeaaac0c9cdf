r"""MAML++ on mini-ImageNet 5-way 5-shot (Antoniou et al. 2019, Table 2: 68.32%).

BNRS, BNWB, LSLR (initialised from inner.lr = 0.01), MSL annealed over 15
epochs, DA (first order for 50 epochs) and Adam 1e-3 cosine-annealed to 1e-5.
4-conv with 48 filters and max-pooling, 5 inner steps in training and at
test, 15 queries per class, meta-batch 2, 100 epochs of 500 iterations; the
top-5 validation checkpoints are kept for the ensemble protocol. The
reference configs anneal from 1e-3 to 1e-3 (a no-op) and disable DA; we
follow the paper. BN at evaluation: transductive (batch statistics).

  tfmetanas-train --config=configs/miniimagenet/mamlpp_5w5s.py --workdir=/tmp/mi_mamlpp_5w5s
  tfmetanas-evaluate --workdir=/tmp/mi_mamlpp_5w5s --split=test
"""

from tfmetanas.experiment.defaults import base_config


def get_config():
    config = base_config()
    config.data.source = "miniimagenet"
    config.data.image_size = 84
    config.data.rotations = False
    config.data.ways, config.data.shots, config.data.queries = 5, 5, 15
    config.model.filters = 48
    config.model.downsample = "max_pool"
    config.model.activation = "leaky_relu"
    config.model.bn.num_steps = config.inner.get_ref("steps")  # one BN row per inner step
    config.model.bn.per_step_stats = True  # BNRS
    config.model.bn.per_step_affine = True  # BNWB
    config.inner.rule = "lslr"
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 5, 5, 0.01
    config.inner.bn_mode = "transductive"
    config.meta.algorithm = "maml"
    config.meta.meta_batch_size = 2
    config.meta.second_order = True
    config.meta.iterations_per_epoch = 500
    config.meta.first_order_until = 50 * 500  # DA [iterations]
    config.meta.msl = True
    config.meta.msl_epochs = 15  # [epochs]
    config.meta.optimizer, config.meta.lr = "adam", 1e-3
    config.meta.schedule, config.meta.min_lr = "cosine", 1e-5
    config.train.steps = 100 * 500
    config.train.eval_every = 500
    config.train.keep_best = 5
    return config
