r"""METANAS, Omniglot 20-way 5-shot (Elsken et al. 2020, Table 1: 98.83%, about 108k parameters).

The paper's setting (Sec. 5.1, Table 4): the DARTS search space with the
few-shot op set, 4 cells with cells 2 and 4 reducing, 3 nodes, input subsets
of size 2 (28 channels); weights and architecture adapted by Adam
(beta1 = 0, lr 1e-3 for the weights, 5e-4 and weight decay 1e-3 for the
architecture), 5 task steps in meta-training with the temperature annealed per
task; Reptile with meta step sizes 1.0 (weights) and 0.6 (architecture),
meta-batch 10; the architecture frozen for the first half of meta-training;
meta-test 50+50 steps, hard pruning at 0.01. The number of meta-iterations is
our choice. See docs/metanas.md.

  tfmetanas-train --config=configs/omniglot/metanas_20w5s.py --workdir=/tmp/metanas_20w5s_omni
  tfmetanas-evaluate --workdir=/tmp/metanas_20w5s_omni --split=test
"""

from tfmetanas.experiment.defaults import metanas_config


def get_config():
    return metanas_config("omniglot", 20, 5, 5, arch_lr=5e-4)
