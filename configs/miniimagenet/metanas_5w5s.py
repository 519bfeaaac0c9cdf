r"""METANAS, mini-ImageNet 5-way 5-shot (Elsken et al. 2020, Table 1: 71.07%, about 130k parameters).

The paper's setting (Sec. 5.1, Table 4): the DARTS search space with the
few-shot op set, 4 cells with cells 2 and 4 reducing, 3 nodes, input subsets
of size 2 (28 channels); weights and architecture adapted by Adam
(beta1 = 0, lr 1e-3 for the weights, 1e-3 and weight decay 1e-3 for the
architecture), 5 task steps in meta-training with the temperature annealed per
task; Reptile with meta step sizes 1.0 (weights) and 0.6 (architecture),
meta-batch 10; the architecture frozen for the first half of meta-training;
meta-test 50+50 steps, hard pruning at 0.01. The number of meta-iterations is
our choice. See docs/metanas.md.

  tfmetanas-train --config=configs/miniimagenet/metanas_5w5s.py --workdir=/tmp/metanas_5w5s_mini
  tfmetanas-evaluate --workdir=/tmp/metanas_5w5s_mini --split=test
"""

from tfmetanas.experiment.defaults import base_config


def get_config():
    config = base_config()
    config.data.source = "miniimagenet"
    config.data.ways, config.data.shots, config.data.queries = 5, 5, 15
    config.model.name = "darts"
    config.model.darts.channels = 28
    config.inner.groups = ("weights", "arch")
    config.inner.rule, config.inner.lr, config.inner.adam_beta1 = "adam", 1e-3, 0.0
    config.inner.arch = {"rule": "adam", "lr": 1e-3, "weight_decay": 1e-3}
    config.inner.steps = 5
    config.meta.algorithm = "reptile"
    config.meta.step_sizes = {"weights": 1.0, "arch": 0.6}
    config.meta.schedule = "linear"
    config.meta.meta_batch_size = 10
    config.metanas.eval_arch_steps, config.metanas.eval_weight_steps = 50, 50
    config.train.steps = 30000
    config.train.eval_every = 1000
    config.eval.num_val_tasks = 100
    return config
