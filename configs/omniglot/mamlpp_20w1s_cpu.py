r"""MAML++ vs MAML, Omniglot 20-way 1-shot, at a CPU budget (issue: MAML++ and ALFA).

`mamlpp_20w1s.py` (paper Table 1: 97.65%, 100 epochs of 500 iterations) with
its whole schedule compressed into `train.steps` iterations: an "epoch" is
steps / 100 iterations, so MSL anneals over the first 10% of the run, DA is
first order for the first half and CA reaches its floor at the end, as in the
paper's run. Everything else is the paper's: conv4 with 64 filters and
max-pooling, BNRS + BNWB, LSLR from 0.1, 5 inner steps, meta-batch 8, one query
per class, MAML++ split. The baseline is the same network and data with every
MAML++ piece off (`maml_20w1s_cpu.py`: the paper's "local MAML", 91.27%).
Both stop at `train.steps` or after `train.time_limit_minutes`.

  tfmetanas-train --config=configs/omniglot/mamlpp_20w1s_cpu.py --workdir=/tmp/mamlpp_20w1s_cpu
  tfmetanas-evaluate --workdir=/tmp/mamlpp_20w1s_cpu --split=test --num_tasks=600
"""

from tfmetanas.experiment.defaults import sibling_config

STEPS = 1500


def get_config():
    config = sibling_config(__file__, "mamlpp_20w1s.py")
    config.train.steps = STEPS
    config.meta.iterations_per_epoch = STEPS // 100  # the paper's 100 epochs, compressed
    config.meta.first_order_until = 50 * (STEPS // 100)  # DA: first order for 50 "epochs"
    config.train.eval_every = 100
    config.eval.num_val_tasks = 200
    config.train.log_every = 20
    config.train.time_limit_minutes = 45.0
    return config
