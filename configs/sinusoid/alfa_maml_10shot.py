r"""ALFA+MAML on sinusoid regression, 10-shot, 2x40 MLP (Baik et al. 2020, Table 8: MSE 0.62).

The MAML protocol of configs/sinusoid/maml_10shot.py (y = A sin(x - phi),
A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]; one inner step of lr 0.01 in
training (MAML: 10 at test); meta-batch 25; Adam 1e-3; 70,000 iterations) with a
1-40-40-1 ReLU MLP.
ALFA's generated learning rate and weight decay replace SGD in the inner
loop (alpha0 initialised from inner.lr; g_phi depth 3 as in the paper). The
number of inner steps follows our MAML sinusoid configs, except that ALFA is
tested after the 1 step it was trained for (10 repetitions of the generated
step-0 update diverge); compare with MAML's 1-step MSE (docs/results.md).

  tfmetanas-train --config=configs/sinusoid/alfa_maml_10shot.py --workdir=/tmp/sin_alfa_maml_10shot
  tfmetanas-evaluate --workdir=/tmp/sin_alfa_maml_10shot --split=test
"""

from tfmetanas.experiment.defaults import base_config


def get_config():
    config = base_config()
    config.data.source = "sinusoid"
    config.data.shots, config.data.queries = 10, 10
    config.model.name = "mlp"
    config.model.hidden = (40, 40)
    # One step at test too: the generator only learns the hyperparameters of the
    # steps it trains on, and repeating step 0's 10 times diverges (NaN, measured).
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 1, 1, 0.01
    config.inner.rule = "alfa"
    config.inner.alfa = dict(layers=3, init_beta=1.0)  # g_phi depth (paper: 3; official code: 2)
    config.meta.algorithm = "maml"
    config.meta.second_order = True
    config.meta.meta_batch_size = 25
    config.train.steps = 70_000
    config.train.eval_every = 5000
    config.train.log_every = 500
    return config
