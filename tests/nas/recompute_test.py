"""Recomputed cells (`models.recompute`, `SearchNetwork(recompute_cells=...)`): the
plain network's outputs and gradients, to second order, eager, compiled and in
the task learner's while loop; the forward pass really runs twice; state
updates and impossible settings are refused."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tfmetanas import errors
from tfmetanas.meta import inner, metanas, rules
from tfmetanas.models import recompute
from tfmetanas.models.params import FunctionalModel
from tfmetanas.nas import darts
from tfmetanas.nas import ops as ops_lib

PRIMS = ("max_pool_3x3", "skip_connect", "conv_3x3", "sep_conv_3x3", "dil_conv_3x3")


def tiny(recompute_cells, seed=0):
    keras.utils.set_random_seed(seed)
    net = darts.SearchNetwork(3, channels=4, num_cells=3, reduction_cells=(1,), num_nodes=2,
                              primitives=PRIMS, running_stats=False,
                              recompute_cells=recompute_cells,
                              # Exact compiled second-order gradients through max-pooling
                              # (TensorFlow's own are not: tests/nas/max_pool_argmax_test.py).
                              max_pool_gradient="argmax")
    net(tf.zeros((2, 8, 8, 1)))
    return FunctionalModel(net)


def fast_params(fm, seed=1):
    """Weights moved off the variables (fast weights) and a random architecture."""
    rng = np.random.default_rng(seed)
    out = {}
    for v in fm.trainable_variables:
        scale = 1.0 if fm.group_of[v.path] == "arch" else 0.05
        out[v.path] = v.value + tf.constant(scale * rng.standard_normal(v.shape), tf.float32)
    return out


def loss_and_gradients(fm, params, images):
    """Loss, its gradient and the gradient of the squared weight-gradient norm
    with respect to the architecture (a second-order, MAML-like meta-gradient)."""
    arch = [p for p in params if fm.group_of[p] == "arch"]
    with tf.GradientTape() as outer:
        outer.watch([params[p] for p in arch])
        with tf.GradientTape() as tape:
            tape.watch(list(params.values()))
            logits, _ = fm(params, {}, images, training=True, temperature=0.5)
            loss = tf.reduce_sum(tf.sin(logits))
        grads = tape.gradient(loss, params)
        weight_norm = tf.add_n([tf.reduce_sum(tf.square(grads[p])) for p in params
                                if fm.group_of[p] == "weights"])
    second = outer.gradient(weight_norm, {p: params[p] for p in arch})
    return logits, grads, second


@pytest.mark.parametrize("compiled", [False, True])
def test_recomputed_cells_give_the_same_outputs_and_gradients(compiled):
    images = tf.random.stateless_uniform((4, 8, 8, 1), seed=[3, 4])
    results = {}
    for cells in (0, 2):
        fm = tiny(cells)
        params = fast_params(fm)
        run = tf.function(loss_and_gradients, autograph=False) if compiled else loss_and_gradients
        results[cells] = run(fm, params, images)
    (logits0, grads0, second0), (logits2, grads2, second2) = results[0], results[2]
    np.testing.assert_allclose(logits2.numpy(), logits0.numpy(), rtol=1e-6, atol=1e-6)
    for path, g in grads0.items():
        np.testing.assert_allclose(grads2[path].numpy(), g.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=path)
    # Not vacuous: the alphas get second-order gradients (a single subset's
    # beta, a softmax of one, gets none).
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for p, g in second0.items() if "alpha" in p)
    for path, g in second0.items():
        np.testing.assert_allclose(second2[path].numpy(), g.numpy(), rtol=1e-3, atol=1e-5,
                                   err_msg=path)


def test_the_backward_pass_runs_the_recomputed_cells_forward_again():
    images = tf.random.stateless_uniform((4, 8, 8, 1), seed=[3, 4])

    def convs(cells, differentiate):
        fm = tiny(cells)
        params = fm.params()

        @tf.function(autograph=False)
        def run(params):
            with tf.GradientTape() as tape:
                tape.watch(list(params.values()))
                logits, _ = fm(params, {}, images, training=True, temperature=0.5)
            return tape.gradient(logits, params) if differentiate else logits

        graph = run.get_concrete_function(params).graph.as_graph_def()
        # Dense convolutions: Conv2D, and the 1x1 ones as MatMul (layers.pointwise_conv).
        return sum(n.op in ("Conv2D", "MatMul") for n in graph.node)

    # The forward passes are the same; the backward pass adds the first two
    # cells' convolutions once more.
    assert convs(2, False) == convs(0, False)
    extra = convs(2, True) - convs(0, True)
    assert 0 < extra < convs(0, False)


def test_a_while_loop_task_learner_adapts_the_same():
    task = {k: v[0] for k, v in helpers.random_tasks(batch=1).items()}
    adapted = {}
    for cells in (0, 1):
        fm = tiny(cells)
        learner = inner.TaskLearner(fm, {"weights": rules.Adam(0.01), "arch": rules.SGD(0.5)}, 3,
                                    forward_kwargs=metanas.TemperatureAnnealing(1.0, 0.1))
        adapted[cells] = tf.function(
            lambda t, learner=learner: learner.adapt(t, use_while_loop=True).params)(task)
    for path, value in adapted[0].items():
        np.testing.assert_allclose(adapted[1][path].numpy(), value.numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=path)


def test_a_recomputed_call_that_updates_state_is_refused():
    bn = ops_lib.BatchNorm()
    x = tf.random.stateless_normal((4, 5, 5, 3), seed=[1, 2])
    bn(x, training=False)  # builds; track_running_stats is on
    with pytest.raises(errors.ConfigError, match="assigned"):
        recompute.recomputed_call(bn, lambda x: bn(x, training=True), x)
    bn.track_running_stats = False
    y = recompute.recomputed_call(bn, lambda x: bn(x, training=True), x)
    np.testing.assert_allclose(y.numpy(), bn(x, training=True).numpy(), rtol=1e-6)


@pytest.mark.parametrize("settings", [
    {"recompute_cells": 1, "running_stats": True},
    {"recompute_cells": 1, "running_stats": False, "soft_prune": "cond"},
    {"recompute_cells": 4, "running_stats": False},
])
def test_impossible_recompute_settings_are_refused(settings):
    with pytest.raises(errors.ConfigError, match="recompute_cells"):
        darts.SearchNetwork(3, channels=4, num_cells=3, reduction_cells=(1,), num_nodes=2,
                            primitives=PRIMS, **settings)
