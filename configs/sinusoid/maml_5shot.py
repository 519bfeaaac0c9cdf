r"""MAML on sinusoid regression, 5-shot (ALFA paper Table 8, MAML 2x40: MSE 1.24 +- 0.21).

The MAML paper protocol: y = A sin(x - phi), A ~ U[0.1, 5], phi ~ U[0, pi],
x ~ U[-5, 5]; a 1-40-40-1 ReLU MLP; one inner SGD step of lr 0.01 in training
(the lr the paper states), 10 at test; meta-batch 25; Adam 1e-3; 70,000
iterations; MSE on 600 fixed test tasks.

  tfmetanas-train --config=configs/sinusoid/maml_5shot.py --workdir=/tmp/sin_maml_5
  tfmetanas-evaluate --workdir=/tmp/sin_maml_5 --split=test
"""

from tfmetanas.experiment.defaults import base_config


def get_config():
    config = base_config()
    config.data.source = "sinusoid"
    config.data.shots, config.data.queries = 5, 5
    config.model.name = "mlp"
    config.model.hidden = (40, 40)
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 1, 10, 0.01
    config.meta.algorithm = "maml"
    config.meta.second_order = True
    config.meta.meta_batch_size = 25
    config.train.steps = 70_000
    config.train.eval_every = 5000
    config.train.log_every = 500
    return config
