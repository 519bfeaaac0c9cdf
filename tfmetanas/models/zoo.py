"""Backbones by name: ``build_model(config.model, input_shape, output_dim)``.

Every builder returns a *built* Keras model (called once on zeros) whose
``call`` accepts ``training`` and the keyword arguments the task learner passes
(``step`` for the fixed backbones, ``temperature`` for DARTS search networks).
"""

import keras

from tfmetanas import errors, registry
from tfmetanas.models import backbones
from tfmetanas.nas import darts
from tfmetanas.nas import ops as nas_ops

BACKBONES = registry.Registry("backbone")


def _get(config, key, default):
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


@BACKBONES.register("conv4")
def _conv4(config, input_shape, output_dim):
    num_blocks = int(_get(config, "num_blocks", 4))
    if _get(config, "downsample", "max_pool") == "max_pool" and len(input_shape) == 3:
        # Each block halves the size (2x2 'VALID' pooling): too small an image
        # would fail deep in the runtime, not as a config error.
        if min(input_shape[0], input_shape[1]) < 2**num_blocks:
            raise errors.ConfigError(
                f"conv4 with {num_blocks} max-pooling blocks needs images of at least "
                f"{2 ** num_blocks} px, got {input_shape[0]}x{input_shape[1]} (data.image_size); "
                "use fewer model.num_blocks or model.downsample='strided'."
            )
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


@BACKBONES.register("darts")
def _darts(config, input_shape, output_dim):
    """The METANAS search network; its options live in ``model.darts``."""
    del input_shape
    d = _get(config, "darts", None) or {}
    return darts.SearchNetwork(
        output_dim,
        channels=int(_get(d, "channels", 28)),
        num_cells=int(_get(d, "num_cells", 4)),
        reduction_cells=tuple(_get(d, "reduction_cells", (1, 3))),
        num_nodes=int(_get(d, "num_nodes", 3)),
        k=int(_get(d, "k", 2)),
        primitives=tuple(_get(d, "primitives", nas_ops.FEW_SHOT_PRIMITIVES)),
        sparsify=_get(d, "sparsify", "ops_and_inputs"),
        prune_threshold=float(_get(d, "prune_threshold", 0.01)),
        hard_threshold=float(_get(d, "hard_threshold", 0.01)),
        soft_prune=_get(d, "soft_prune", "mask"),
        running_stats=bool(_get(d, "running_stats", True)),
        recompute_cells=int(_get(d, "recompute_cells", 0)),
        max_pool_gradient=str(_get(d, "max_pool_gradient", "native")),
        stem_multiplier=int(_get(d, "stem_multiplier", 3)),
        reduction_channel_multiplier=int(_get(d, "reduction_channel_multiplier", 1)),
    )


def build_model(config, input_shape, output_dim, seed=None):
    """Builds (and initialises, from `seed` if given) the backbone `config.name`."""
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    model = BACKBONES.get(_get(config, "name", "conv4"))(config, tuple(input_shape), int(output_dim))
    model(keras.ops.zeros((2, *input_shape)), training=False)
    return model
