"""Layers for fast-weight meta-learning.

`MetaBatchNorm` is batch normalisation that knows the inner step
(MAML++, Antoniou et al., ICLR 2019, Section 4 "BNRS" and "BNWB"):

- one set of running statistics per inner step (BNRS), state;
- one set of gamma/beta per inner step (BNWB), in the ``meta`` group: learned
  in the outer loop only, never adapted by the inner loop.

With ``num_steps = 1`` it is ordinary batch normalisation. The current inner
step reaches the layer through the model's ``call(..., step=j)`` argument,
i.e. through `FunctionalModel(...)(params, state, x, step=j)`; it may be a
Python int or a scalar int tensor (inside `tf.while_loop`). Steps beyond the
last learned one reuse the last one (meta-test may run more steps than
meta-training).
"""

import keras
import tensorflow as tf

from tfmetanas.models import params as params_lib


class MetaBatchNorm(keras.layers.Layer):
    """Batch normalisation with optional per-step statistics and affine weights.

    Args:
      num_steps: number of inner steps that get their own statistics/weights.
      per_step_stats: BNRS: running statistics per step.
      per_step_affine: BNWB: gamma/beta per step.
      affine_group: parameter group of gamma/beta ("meta": outer loop only,
        the MAML++ reference default; "weights": adapted in the inner loop).
      momentum: running statistics decay (Keras convention: new = m * old +
        (1 - m) * batch; PyTorch's momentum 0.1 is 0.9 here).
      epsilon: variance epsilon.
      center, scale: whether beta / gamma exist.
    """

    def __init__(
        self,
        num_steps=1,
        per_step_stats=False,
        per_step_affine=False,
        affine_group="meta",
        momentum=0.9,
        epsilon=1e-5,
        center=True,
        scale=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_steps = int(num_steps)
        self.per_step_stats = bool(per_step_stats)
        self.per_step_affine = bool(per_step_affine)
        self.affine_group = affine_group
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center, self.scale = center, scale

    def build(self, input_shape):
        channels = int(input_shape[-1])
        stat_rows = self.num_steps if self.per_step_stats else 1
        affine_rows = self.num_steps if self.per_step_affine else 1
        if self.scale:
            self.gamma = params_lib.add_param(
                self, "gamma", (affine_rows, channels), "ones", group=self.affine_group
            )
        if self.center:
            self.beta = params_lib.add_param(
                self, "beta", (affine_rows, channels), "zeros", group=self.affine_group
            )
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=(stat_rows, channels), initializer="zeros", trainable=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=(stat_rows, channels), initializer="ones", trainable=False
        )

    def _row(self, table, rows, step):
        if rows == 1:
            return table[0]
        index = tf.minimum(tf.cast(step, tf.int32), rows - 1)
        return tf.gather(table, index)

    def call(self, x, training=False, step=0):
        reduce_axes = list(range(len(x.shape) - 1))
        stat_rows = self.num_steps if self.per_step_stats else 1
        if training:
            # Not tf.nn.moments: it stops the gradient through the mean inside
            # the variance, which is harmless for first derivatives but makes
            # second-order meta-gradients wrong.
            mean = tf.reduce_mean(x, reduce_axes)
            variance = tf.reduce_mean(tf.square(x - mean), reduce_axes)
            # Only the row of the current step moves (BNRS): a one-hot blend
            # works for Python and tensor steps alike.
            if stat_rows == 1:
                select = tf.ones([1, 1], x.dtype)
            else:
                index = tf.minimum(tf.cast(step, tf.int32), stat_rows - 1)
                select = tf.one_hot(index, stat_rows, dtype=x.dtype)[:, None]
            decay = (1.0 - self.momentum) * select
            self.moving_mean.assign(
                self.moving_mean - decay * (self.moving_mean - tf.stop_gradient(mean))
            )
            self.moving_variance.assign(
                self.moving_variance - decay * (self.moving_variance - tf.stop_gradient(variance))
            )
        else:
            mean = self._row(self.moving_mean, stat_rows, step)
            variance = self._row(self.moving_variance, stat_rows, step)
        affine_rows = self.num_steps if self.per_step_affine else 1
        gamma = self._row(self.gamma, affine_rows, step) if self.scale else None
        beta = self._row(self.beta, affine_rows, step) if self.center else None
        return tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.epsilon)

    def get_config(self):
        return {
            **super().get_config(),
            "num_steps": self.num_steps,
            "per_step_stats": self.per_step_stats,
            "per_step_affine": self.per_step_affine,
            "affine_group": self.affine_group,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        }
