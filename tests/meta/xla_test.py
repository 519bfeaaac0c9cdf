"""Compiled (XLA) meta-gradients against uncompiled ones, for what configs may compile."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tfmetanas import errors
from tfmetanas.experiment import trainer
from tfmetanas.meta import inner, rules
from tfmetanas.models import params as params_lib
from tfmetanas.models import zoo


def _meta_gradient(fm, tasks, second_order, jit, kind="classification", lr=0.3):
    learner = inner.TaskLearner(fm, {"weights": rules.SGD(lr)}, 2, kind=kind)
    variables = fm.trainable_variables

    @tf.function(jit_compile=jit)
    def grads(tasks):
        with tf.GradientTape() as tape:
            losses = [
                learner.adapt({k: v[b] for k, v in tasks.items()}, second_order=second_order)
                .query_losses[-1]
                for b in range(2)
            ]
            loss = tf.add_n(losses)
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]

    return grads(tasks)


# Every backbone/order combination a shipped config may compile; second order
# through max-pooling is refused (see test below).
CASES = [
    ("conv4_strided", True),
    ("conv4_max_pool", False),
    ("mlp", True),
]


@pytest.mark.parametrize("backbone,second_order", CASES)
def test_compiled_meta_gradients_equal_uncompiled(backbone, second_order):
    kind, lr = "classification", 0.3
    if backbone == "mlp":
        model = zoo.build_model({"name": "mlp", "hidden": (8, 8)}, (1,), 1, seed=0)
        fm = params_lib.FunctionalModel(model)
        x = tf.random.Generator.from_seed(1).uniform([2, 5, 1], -5, 5)
        tasks = {"support_x": x, "support_y": tf.sin(x), "query_x": x + 0.5,
                 "query_y": tf.sin(x + 0.5)}
        kind, lr = "regression", 0.01
    else:
        fm = helpers.tiny_conv(downsample=backbone.split("_", 1)[1], filters=4)
        tasks = helpers.random_tasks()
    plain = _meta_gradient(fm, tasks, second_order, False, kind, lr)
    compiled = _meta_gradient(fm, tasks, second_order, True, kind, lr)
    for a, b, v in zip(plain, compiled, fm.trainable_variables):
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-5, err_msg=v.path)


def test_xla_with_second_order_max_pool_is_refused():
    config = ml_collections.ConfigDict(
        {"model": {"name": "conv4", "downsample": "max_pool"}, "meta": {"second_order": True}}
    )
    with pytest.raises(errors.ConfigError, match="MaxPoolGradGrad"):
        trainer.check_xla(config, jit_compile=True)
    trainer.check_xla(config, jit_compile=False)
    config.meta.second_order = False
    trainer.check_xla(config, jit_compile=True)
