"""Fixed backbones of the meta-learning baselines: conv4 and the regression MLP.

conv4 follows MAML++ (Antoniou et al., ICLR 2019, Section 5): 4 blocks of
[3x3 conv with bias, batch norm, LeakyReLU, 2x2 max-pool], or the strided
variant of MAML (Finn et al., 2017) with stride-2 convolutions and no pooling;
a linear head with N-way outputs; Xavier-uniform initialisation.

The MLP is MAML's sinusoid regressor (1-40-40-1, ReLU).

Every model's ``call`` takes ``step`` (the inner step, for per-step BN) so
the task learner can pass it uniformly.
"""

import keras
import tensorflow as tf

from tfmetanas.models.layers import MetaBatchNorm

_ACTIVATIONS = {
    "relu": tf.nn.relu,
    "leaky_relu": lambda x: tf.nn.leaky_relu(x, alpha=0.01),  # PyTorch's default slope
}


def bn_kwargs(bn_config):
    """MetaBatchNorm arguments from a ``model.bn`` config section (or None)."""
    if bn_config is None:
        return {}
    return {
        "num_steps": bn_config.get("num_steps", 1),
        "per_step_stats": bn_config.get("per_step_stats", False),
        "per_step_affine": bn_config.get("per_step_affine", False),
        "affine_group": bn_config.get("affine_group", "meta"),
        "momentum": bn_config.get("momentum", 0.9),
    }


class Conv4(keras.Model):
    """The 4-block convolutional backbone of MAML / MAML++.

    Args:
      num_classes: N-way outputs.
      filters: channels of every block (64 Omniglot, 48 mini-ImageNet in MAML++, 32 in MAML).
      num_blocks: conv blocks (4).
      downsample: "max_pool" (2x2 max-pool after each block) or "strided"
        (stride-2 convolutions, no pooling).
      activation: "leaky_relu" (MAML++) or "relu" (MAML).
      bn: dict of MetaBatchNorm options (see `bn_kwargs`).
    """

    def __init__(
        self,
        num_classes,
        filters=64,
        num_blocks=4,
        downsample="max_pool",
        activation="leaky_relu",
        bn=None,
        name="conv4",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.downsample = downsample
        self.activation = _ACTIVATIONS[activation]
        init = keras.initializers.GlorotUniform()
        stride = 2 if downsample == "strided" else 1
        self.convs = [
            keras.layers.Conv2D(
                filters, 3, strides=stride, padding="same", kernel_initializer=init,
                name=f"conv{i}",
            )
            for i in range(num_blocks)
        ]
        self.norms = [MetaBatchNorm(**bn_kwargs(bn), name=f"bn{i}") for i in range(num_blocks)]
        self.head = keras.layers.Dense(num_classes, kernel_initializer=init, name="head")

    def features(self, x, training=False, step=0):
        for conv, norm in zip(self.convs, self.norms):
            x = self.activation(norm(conv(x), training=training, step=step))
            if self.downsample == "max_pool":
                x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        return tf.reshape(x, [tf.shape(x)[0], -1])

    def call(self, x, training=False, step=0):
        return self.head(self.features(x, training=training, step=step))


class MLP(keras.Model):
    """The sinusoid regressor of MAML: Dense-ReLU layers and a linear output."""

    def __init__(self, output_dim=1, hidden=(40, 40), name="mlp", **kwargs):
        super().__init__(name=name, **kwargs)
        self.hidden = [
            keras.layers.Dense(h, activation="relu", name=f"dense{i}") for i, h in enumerate(hidden)
        ]
        self.out = keras.layers.Dense(output_dim, name="out")

    def call(self, x, training=False, step=0):
        del training, step
        for layer in self.hidden:
            x = layer(x)
        return self.out(x)
