r"""METANAS, Omniglot 5-way 1-shot, in a CPU budget (shows the method working here).

The paper's METANAS (`metanas_20w1s.py`) shrunk to run on 2 CPU cores: 5-way
tasks, 12 channels, 2 cells (the second reduces), 2 nodes per cell, 3 task
steps in meta-training, meta-batch 5, 800 meta-iterations (the first 400 a
warm-up with the architecture frozen, as the paper's first half), meta-test
15+15 steps, at most 60 minutes of wall time; soft pruning off in
meta-training (`prune_threshold=0`, as in the recorded run), hard pruning at
0.01 at meta-test as in the paper. Same inner rules, temperature annealing
and Reptile step sizes as the paper, except the architecture's inner
learning rate: 5e-3, ten times the paper's Omniglot 5e-4, because this
budget has a few hundred architecture iterations where the paper has tens
of thousands (at 5e-4 the architecture weights stayed within 0.140-0.145 of
uniform after 60 of them and nothing was pruned, docs/results.md). There is
no paper number for this size; docs/results.md has ours.

  tfmetanas-train --config=configs/omniglot/metanas_5w1s_cpu.py --workdir=/tmp/metanas_cpu
  tfmetanas-evaluate --workdir=/tmp/metanas_cpu --split=test
"""

from tfmetanas.experiment.defaults import metanas_config


def get_config():
    config = metanas_config("omniglot", 5, 1, 1, arch_lr=5e-3, steps=800)
    config.data.train_shots = 5
    config.model.darts.channels = 12
    config.model.darts.num_cells = 2
    config.model.darts.reduction_cells = (1,)
    config.model.darts.num_nodes = 2
    config.model.darts.prune_threshold = 0.0
    config.inner.steps = 3
    config.meta.meta_batch_size = 5
    config.metanas.eval_arch_steps, config.metanas.eval_weight_steps = 15, 15
    config.train.time_limit_minutes = 60.0
    config.train.eval_every = 200
    config.eval.num_val_tasks = 50
    return config
