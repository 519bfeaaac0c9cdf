"""`ops.max_pool_argmax`: TensorFlow's max-pooling, with a gradient whose own
gradient is exact in compiled graphs, and the search network option that uses it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.nas import recompute_test
from tfmetanas import errors
from tfmetanas.experiment import trainer
from tfmetanas.models.params import FunctionalModel
from tfmetanas.nas import darts
from tfmetanas.nas import ops as ops_lib


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_values_and_gradients_are_max_pooling_s(stride, compiled):
    x = tf.random.stateless_normal((2, 7, 7, 3), seed=[1, 2])
    dy = tf.random.stateless_normal((2, 7 if stride == 1 else 4, 7 if stride == 1 else 4, 3),
                                    seed=[3, 4])

    def value_and_grad(pool, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = pool(x)
        return y, tape.gradient(y, x, output_gradients=dy)

    ours = lambda x: ops_lib.max_pool_argmax(x, 3, stride)  # noqa: E731
    theirs = lambda x: tf.nn.max_pool2d(x, 3, stride, "SAME")  # noqa: E731
    run = tf.function(value_and_grad, autograph=False) if compiled else value_and_grad
    (y, dx), (y_ref, dx_ref) = run(ours, x), run(theirs, x)
    np.testing.assert_array_equal(y.numpy(), y_ref.numpy())
    np.testing.assert_allclose(dx.numpy(), dx_ref.numpy(), rtol=1e-6, atol=1e-6)


W1 = tf.random.stateless_normal((3, 3, 4, 4), seed=[3, 4]) * 0.3
W2 = tf.random.stateless_normal((3, 3, 4, 4), seed=[5, 6]) * 0.3
X = tf.random.stateless_normal((4, 8, 8, 4), seed=[1, 2])


def weight_gradient_norm(a, pool):
    """||d loss / d (w1, w2)||^2 for a net mixing a pooled and a convolved path by `a`."""
    with tf.GradientTape() as tape:
        tape.watch([W1, W2])
        h = tf.nn.conv2d(tf.nn.relu(X), W1, 1, "SAME")
        p = pool(h)
        y = a[0] * p + a[1] * tf.nn.conv2d(tf.nn.relu(p), W2, 1, "SAME")
        loss = tf.reduce_sum(tf.sin(y))
    grads = tape.gradient(loss, [W1, W2])
    return tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])


def meta_gradient(a, pool):
    with tf.GradientTape() as outer:
        outer.watch(a)
        norm = weight_gradient_norm(a, pool)
    return outer.gradient(norm, a)


def test_compiled_second_order_gradients_match_eager_and_finite_differences():
    """The case TensorFlow's own gradient gets wrong inside tf.function: a 3x3
    stride-1 max-pool whose input depends on the weights."""
    a = tf.constant([0.7, 0.4])
    pool = lambda h: ops_lib.max_pool_argmax(h, 3, 1)  # noqa: E731
    eager = meta_gradient(a, pool).numpy()
    eager_native = meta_gradient(a, lambda h: tf.nn.max_pool2d(h, 3, 1, "SAME")).numpy()
    np.testing.assert_allclose(eager, eager_native, rtol=1e-4)
    for _ in range(3):  # Fresh traces: TensorFlow's gradient was wrong in some, not all.
        compiled = tf.function(meta_gradient, autograph=False)(a, pool).numpy()
        np.testing.assert_allclose(compiled, eager, rtol=1e-4)
    h = 1e-3
    for i in range(2):
        e = np.zeros(2, np.float32)
        e[i] = h
        fd = (float(weight_gradient_norm(a + e, pool)) -
              float(weight_gradient_norm(a - e, pool))) / (2 * h)
        np.testing.assert_allclose(eager[i], fd, rtol=2e-3)


def tiny_search(max_pool_gradient):
    keras.utils.set_random_seed(0)
    net = darts.SearchNetwork(3, channels=4, num_cells=3, reduction_cells=(1,), num_nodes=2,
                              primitives=recompute_test.PRIMS, running_stats=False,
                              max_pool_gradient=max_pool_gradient)
    net(tf.zeros((2, 8, 8, 1)))
    return FunctionalModel(net)


def test_search_network_second_order_architecture_gradients_compiled_equal_eager():
    images = tf.random.stateless_uniform((4, 8, 8, 1), seed=[3, 4])
    results = {}
    for mode in ("native", "argmax"):
        fm = tiny_search(mode)
        params = recompute_test.fast_params(fm)
        results[mode, "eager"] = recompute_test.loss_and_gradients(fm, params, images)
        if mode == "argmax":
            compiled = tf.function(recompute_test.loss_and_gradients, autograph=False)
            results[mode, "compiled"] = compiled(fm, params, images)
    reference = results["native", "eager"]
    for key in (("argmax", "eager"), ("argmax", "compiled")):
        logits, grads, second = results[key]
        np.testing.assert_allclose(logits.numpy(), reference[0].numpy(), rtol=1e-5, atol=1e-6)
        for path, g in reference[1].items():
            np.testing.assert_allclose(grads[path].numpy(), g.numpy(), rtol=1e-4, atol=1e-6,
                                       err_msg=f"{key} {path}")
        for path, g in reference[2].items():
            np.testing.assert_allclose(second[path].numpy(), g.numpy(), rtol=1e-3, atol=1e-5,
                                       err_msg=f"{key} {path}")


def metanas_second_order_config(max_pool_gradient):
    from tests.meta import metanas_test

    config = metanas_test.metanas_config("maml")
    config.model.darts.primitives = ("max_pool_3x3", "skip_connect", "conv_3x3")
    config.meta.second_order = True
    config.model.darts.max_pool_gradient = max_pool_gradient
    return config


def test_second_order_metanas_needs_the_argmax_gradient():
    with pytest.raises(errors.ConfigError, match="max_pool_gradient='argmax'"):
        trainer.Experiment(metanas_second_order_config("native"), splits=("train",))
    exp = trainer.Experiment(metanas_second_order_config("argmax"), splits=("train",))
    assert exp.model.max_pool_gradient == "argmax"
    pools = [layer for layer in exp.model._flatten_layers() if isinstance(layer, ops_lib.Pool)]
    assert pools and all(p.max_pool_gradient == "argmax" for p in pools)
    with pytest.raises(errors.ConfigError, match="max_pool_gradient"):
        tiny_search("scatter")
