"""MAML++'s multi-step loss (MSL) schedule as a function of the meta-iteration.

Antoniou et al., "How to train your MAML", ICLR 2019 (arXiv:1810.09502),
Section 4, "Multi-Step Loss Optimization (MSL)": the meta-loss is the
weighted sum of the query losses after every inner step,
sum_j v_j L_query(theta_j). The weights start uniform (1/N for N inner steps)
and are annealed over the first ``msl_epochs`` epochs towards the last step:

  decay     = 1 / N / msl_epochs                      (per epoch)
  v_j       = max(1/N - epoch * decay, 0.03 / N)      for j < N - 1
  v_{N-1}   = min(1/N + epoch * (N - 1) * decay, 1 - (N - 1) * 0.03 / N)

(the reference implementation's `get_per_step_loss_importance_vector`; the
weights sum to 1 at every epoch because the last weight gains what the
others lose, until both hit their bounds together). From epoch ``msl_epochs``
on, only the last step counts (the reference stops using MSL then), i.e. v
is one-hot on the last step and MAML++ is plain MAML.

An epoch is ``iterations_per_epoch`` meta-iterations (500 in MAML++); the
epoch index is the integer part of iteration / iterations_per_epoch, as in
the reference, so the weights change once per epoch.

The other MAML++ pieces live where they belong: BNRS/BNWB in
`tfmetanas.models.layers.MetaBatchNorm`, LSLR in `tfmetanas.meta.rules.LSLR`,
derivative-order annealing (DA) in `Algorithm.second_order` and cosine
annealing (CA) in `tfmetanas.meta.algorithms.outer_schedule`.
"""

import keras
import tensorflow as tf


def msl_weights(iteration, num_steps, msl_epochs, iterations_per_epoch=500, dtype=None):
    """The MSL weights v_j at a meta-iteration.

    Args:
      iteration: the meta-iteration (Python int or scalar integer tensor).
      num_steps: N, the number of inner steps.
      msl_epochs: epochs over which the weights are annealed; 0 disables MSL
        (one-hot on the last step from the start).
      iterations_per_epoch: meta-iterations per epoch (500 in MAML++).
      dtype: dtype of the result (default: Keras floatx).

    Returns:
      A [num_steps] tensor of weights that sum to 1.

    References: arXiv:1810.09502, Section 4 (MSL).

    Example:
      msl_weights(0, 5, 10)      # [0.2, 0.2, 0.2, 0.2, 0.2]
      msl_weights(5000, 5, 10)   # [0, 0, 0, 0, 1] (after 10 epochs of 500)
    """
    dtype = dtype or keras.config.floatx()
    n = int(num_steps)
    last_only = tf.one_hot(n - 1, n, dtype=dtype)
    if n == 1 or int(msl_epochs) <= 0:
        return last_only
    epoch = tf.cast(
        tf.math.floordiv(tf.cast(iteration, tf.int64), int(iterations_per_epoch)), dtype
    )
    decay = 1.0 / n / float(msl_epochs)
    floor = 0.03 / n
    others = tf.maximum(1.0 / n - epoch * decay, floor) * tf.ones([n - 1], dtype)
    final = tf.minimum(1.0 / n + epoch * (n - 1) * decay, 1.0 - (n - 1) * floor)
    annealed = tf.concat([others, final[None]], 0)
    return tf.where(epoch < float(msl_epochs), annealed, last_only)


class MSLSchedule:
    """``iteration -> [N] weights``: the `step_weights` argument of `learners.MAML`.

    Args:
      num_steps: N, the inner steps of meta-training.
      msl_epochs: annealing epochs (``meta.msl_epochs``).
      iterations_per_epoch: meta-iterations per epoch (``meta.iterations_per_epoch``).

    References: arXiv:1810.09502, Section 4 (MSL).
    """

    def __init__(self, num_steps, msl_epochs, iterations_per_epoch=500):
        self.num_steps = int(num_steps)
        self.msl_epochs = int(msl_epochs)
        self.iterations_per_epoch = int(iterations_per_epoch)

    def __call__(self, iteration):
        return msl_weights(
            iteration, self.num_steps, self.msl_epochs, self.iterations_per_epoch
        )
