r"""MAML on sinusoid regression, 5-shot, 3x80 MLP (Baik et al. 2020, Table 8: MSE 0.84).

The MAML protocol of configs/sinusoid/maml_5shot.py (y = A sin(x - phi),
A ~ U[0.1, 5], phi ~ U[0, pi], x ~ U[-5, 5]; one inner step of lr 0.01 in
training, 10 at test; meta-batch 25; Adam 1e-3; 70,000 iterations) with a
1-80-80-80-1 ReLU MLP.

  tfmetanas-train --config=configs/sinusoid/maml_5shot_3x80.py --workdir=/tmp/sin_maml_5shot_3x80
  tfmetanas-evaluate --workdir=/tmp/sin_maml_5shot_3x80 --split=test
"""

from tfmetanas.experiment.defaults import base_config


def get_config():
    config = base_config()
    config.data.source = "sinusoid"
    config.data.shots, config.data.queries = 5, 5
    config.model.name = "mlp"
    config.model.hidden = (80, 80, 80)
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 1, 10, 0.01
    config.meta.algorithm = "maml"
    config.meta.second_order = True
    config.meta.meta_batch_size = 25
    config.train.steps = 70_000
    config.train.eval_every = 5000
    config.train.log_every = 500
    return config
