"""Backbones by name: ``build_model(config.model, input_shape, output_dim)``.

Every builder returns a *built* Keras model (called once on zeros) whose
``call`` accepts ``training`` and the keyword arguments the task learner passes
(``step`` for the fixed backbones, ``temperature`` for DARTS search networks).
"""

import keras

from tfmetanas import registry
from tfmetanas.models import backbones

BACKBONES = registry.Registry("backbone")


def _get(config, key, default):
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


@BACKBONES.register("conv4")
def _conv4(config, input_shape, output_dim):
    del input_shape
    return backbones.Conv4(
        output_dim,
        filters=_get(config, "filters", 64),
        num_blocks=_get(config, "num_blocks", 4),
        downsample=_get(config, "downsample", "max_pool"),
        activation=_get(config, "activation", "leaky_relu"),
        bn=_get(config, "bn", None),
    )


@BACKBONES.register("resnet12")
def _resnet12(config, input_shape, output_dim):
    del input_shape
    return backbones.ResNet12(
        output_dim,
        channels=tuple(_get(config, "channels", (64, 128, 256, 512))),
        pooling=_get(config, "pooling", "avg"),
        slope=float(_get(config, "slope", 0.1)),
        bn=_get(config, "bn", None),
    )


@BACKBONES.register("mlp")
def _mlp(config, input_shape, output_dim):
    del input_shape
    return backbones.MLP(output_dim, hidden=tuple(_get(config, "hidden", (40, 40))))


def build_model(config, input_shape, output_dim, seed=None):
    """Builds (and initialises, from `seed` if given) the backbone `config.name`."""
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    model = BACKBONES.get(_get(config, "name", "conv4"))(config, tuple(input_shape), int(output_dim))
    model(keras.ops.zeros((2, *input_shape)), training=False)
    return model
