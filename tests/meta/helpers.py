"""Tiny models and tasks shared by the meta-learning tests."""

import tensorflow as tf

from tfmetanas.models import params as params_lib
from tfmetanas.models import zoo


def tiny_conv(ways=3, size=8, filters=3, blocks=2, downsample="max_pool", bn=None, seed=0):
    model = zoo.build_model(
        {"name": "conv4", "filters": filters, "num_blocks": blocks, "downsample": downsample,
         "bn": bn},
        (size, size, 1), ways, seed=seed,
    )
    return params_lib.FunctionalModel(model)


def random_tasks(batch=2, ways=3, shots=2, queries=2, size=8, seed=0, dtype=tf.float32):
    g = tf.random.Generator.from_seed(seed)
    labels = lambda n: tf.tile(tf.range(ways)[None], [batch, n])  # noqa: E731
    return {
        "support_x": tf.cast(g.uniform([batch, ways * shots, size, size, 1]), dtype),
        "support_y": labels(shots),
        "query_x": tf.cast(g.uniform([batch, ways * queries, size, size, 1]), dtype),
        "query_y": labels(queries),
    }


def values(variables):
    return [tf.identity(v.value) for v in variables]
