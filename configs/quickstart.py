r"""Quickstart: first-order MAML, 5-way 1-shot on the embedded `glyphs` data.

Needs no download; trains and evaluates in under 3 minutes on a 2-core CPU.

  tfmetanas-train --config=configs/quickstart.py --workdir=/tmp/quickstart
  tfmetanas-evaluate --workdir=/tmp/quickstart

Expected: well above the 20% chance level (see README, "Quickstart", for the
number measured on the reference machine).
"""

from tfmetanas.experiment.defaults import base_config


def get_config():
    config = base_config()
    config.data.source = "glyphs"
    config.data.ways, config.data.shots, config.data.queries = 5, 1, 5
    config.model.filters = 32
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 1, 3, 0.4
    config.meta.algorithm = "maml"
    config.meta.meta_batch_size = 16
    config.train.steps = 300
    config.train.eval_every = 0
    config.train.log_every = 50
    config.eval.num_tasks = 200
    config.eval.num_val_tasks = 50
    return config
