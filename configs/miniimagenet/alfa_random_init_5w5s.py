r"""ALFA+Random Init (4-conv) on mini-ImageNet 5-way 5-shot (Baik et al. 2020, Table 1: 51.67%).

ALFA's update rule theta <- beta * theta - alpha * grad, alpha and beta
generated per step and layer by g_phi from layer-wise means of weights and
gradients, times meta-learned per-step per-layer post-multipliers (alpha0
initialised from inner.lr = 0.01, beta0 from 1). g_phi depth: 3 layers as the
paper says (the official code has 2: --config.inner.alfa.layers=2).
4-conv with 48 filters and max-pooling, 5 inner steps in training and at
test, 15 queries per class, second-order meta-gradients, no MSL, no per-step
BN; meta-batch 2; Adam 1e-3 (the official config's cosine annealing goes from
1e-3 to 1e-3, i.e. is constant); 100 epochs of 500 iterations.
Random Init: the network starts from a random initialisation that is fixed
(drawn once from train.seed) and never meta-learned (meta.groups = (): BN
gamma/beta included, as in the official code); only g_phi and the
post-multipliers are meta-learned. The official code also meta-learns a
per-parameter weight-decay term in this setting; the paper does not
describe it and it is not implemented.

  tfmetanas-train --config=configs/miniimagenet/alfa_random_init_5w5s.py --workdir=/tmp/mi_alfa_random_init_5w5s
  tfmetanas-evaluate --workdir=/tmp/mi_alfa_random_init_5w5s --split=test
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
    config.inner.rule = "alfa"
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 5, 5, 0.01
    config.inner.alfa = dict(layers=3, init_beta=1.0)  # g_phi depth (paper: 3; official code: 2)
    config.inner.bn_mode = "transductive"
    config.meta.algorithm = "maml"
    config.meta.groups = ()  # Random Init: only ALFA's own variables are meta-learned
    config.meta.meta_batch_size = 2
    config.meta.second_order = True
    config.meta.optimizer, config.meta.lr = "adam", 1e-3
    config.meta.schedule = "constant"
    config.train.steps = 100 * 500
    config.train.eval_every = 500
    config.train.keep_best = 5
    return config
