"""Fixed backbones of the meta-learning baselines: conv4, ResNet-12 and the regression MLP.

conv4 follows MAML++ (Antoniou et al., ICLR 2019, Section 5): 4 blocks of
[3x3 conv with bias, batch norm, LeakyReLU, 2x2 max-pool], or the strided
variant of MAML (Finn et al., 2017) with stride-2 convolutions and no pooling;
a linear head with N-way outputs; Xavier-uniform initialisation.

ResNet-12 is the residual backbone ALFA reports on mini-ImageNet (Baik et
al., NeurIPS 2020, arXiv:2011.00209, Section 4.1 and Table 1; the block of
Oreshkin et al. / Lee et al.): 4 residual blocks of three [3x3 conv, batch
norm] layers with LeakyReLU, a [1x1 conv, batch norm] shortcut, LeakyReLU
after the sum and a 2x2 max-pool; 64-128-256-512 channels by default.

The MLP is MAML's sinusoid regressor (1-40-40-1, ReLU).

Every model's ``call`` takes ``step`` (the inner step, for per-step BN) so
the task learner can pass it uniformly.
"""

import keras
import tensorflow as tf

from tfmetanas import errors
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
        if downsample not in ("max_pool", "strided"):
            raise errors.ConfigError(
                f"model.downsample={downsample!r}; valid: 'max_pool', 'strided'.")
        if activation not in _ACTIVATIONS:
            raise errors.ConfigError(
                f"model.activation={activation!r}; valid: {', '.join(map(repr, _ACTIVATIONS))}.")
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


class ResidualBlock(keras.layers.Layer):
    """[3x3 conv, BN, LeakyReLU] x 2, 3x3 conv, BN; plus a [1x1 conv, BN] shortcut.

    The sum goes through LeakyReLU and a 2x2 max-pool. Every normalisation is
    a `MetaBatchNorm` (per-step statistics and weights when configured, and
    exact second-order gradients, which `keras.layers.BatchNormalization`
    does not give).

    Args:
      filters: output channels.
      slope: LeakyReLU negative slope.
      bn: dict of MetaBatchNorm options.
    """

    def __init__(self, filters, slope=0.1, bn=None, **kwargs):
        super().__init__(**kwargs)
        init = keras.initializers.GlorotUniform()
        self.slope = float(slope)
        # No conv biases: every conv feeds batch norm, which cancels them.
        self.convs = [
            keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                kernel_initializer=init, name=f"conv{i}")
            for i in range(3)
        ]
        self.norms = [MetaBatchNorm(**bn_kwargs(bn), name=f"bn{i}") for i in range(3)]
        self.shortcut = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=init,
                                            name="shortcut")
        self.shortcut_norm = MetaBatchNorm(**bn_kwargs(bn), name="shortcut_bn")

    def call(self, x, training=False, step=0):
        h = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(h), training=training, step=step)
            if i < 2:
                h = tf.nn.leaky_relu(h, alpha=self.slope)
        residual = self.shortcut_norm(self.shortcut(x), training=training, step=step)
        h = tf.nn.leaky_relu(h + residual, alpha=self.slope)
        return tf.nn.max_pool2d(h, 2, 2, "VALID")


class ResNet12(keras.Model):
    """ResNet-12: 4 residual blocks and a linear head.

    Args:
      num_classes: N-way outputs.
      channels: channels of the 4 blocks (64, 128, 256, 512).
      pooling: "avg" (global average pooling before the head, as in the
        ResNet-12 of MetaOptNet/TADAM) or "flatten".
      slope: LeakyReLU negative slope (0.1).
      bn: dict of MetaBatchNorm options (see `bn_kwargs`).

    References: arXiv:2011.00209 (ALFA, Table 1 "ResNet-12").
    """

    def __init__(self, num_classes, channels=(64, 128, 256, 512), pooling="avg", slope=0.1,
                 bn=None, name="resnet12", **kwargs):
        super().__init__(name=name, **kwargs)
        if pooling not in ("avg", "flatten"):
            raise ValueError(f"Unknown ResNet-12 pooling {pooling!r}; valid: 'avg', 'flatten'.")
        self.pooling = pooling
        self.blocks = [
            ResidualBlock(int(c), slope=slope, bn=bn, name=f"block{i}")
            for i, c in enumerate(channels)
        ]
        self.head = keras.layers.Dense(
            num_classes, kernel_initializer=keras.initializers.GlorotUniform(), name="head"
        )

    def features(self, x, training=False, step=0):
        for block in self.blocks:
            x = block(x, training=training, step=step)
        if self.pooling == "avg":
            return tf.reduce_mean(x, axis=[1, 2])
        return tf.reshape(x, [tf.shape(x)[0], -1])

    def call(self, x, training=False, step=0):
        return self.head(self.features(x, training=training, step=step))
