"""MAML: meta-gradients against finite differences, first order, compiled vs eager."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tfmetanas.meta import inner, learners, rules


@pytest.fixture(autouse=True)
def float64():
    # The dtype policy too: Keras fixes the global policy from floatx at the
    # first layer it builds in the process, so floatx alone is not enough.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def _maml(fm, steps=2, lr=0.3):
    learner = inner.TaskLearner(fm, {"weights": rules.SGD(lr)}, steps)
    # SGD(1) makes the applied update equal to minus the meta-gradient.
    return learner, learners.MAML(learner, keras.optimizers.SGD(1.0))


def _meta_loss(learner, tasks, second_order=True):
    losses = []
    for b in range(tasks["support_x"].shape[0]):
        task = {k: v[b] for k, v in tasks.items()}
        losses.append(learner.adapt(task, second_order=second_order).query_losses[-1])
    return tf.add_n(losses) / len(losses)


def _applied_gradient(meta, tasks, second_order):
    before = helpers.values(meta.variables)
    meta.replica_step(tasks, tf.constant(0), second_order=second_order)
    after = helpers.values(meta.variables)
    for v, b in zip(meta.variables, before):
        v.assign(b)
    return [b - a for b, a in zip(before, after)]


@pytest.mark.parametrize("downsample", ["max_pool", "strided"])
def test_second_order_meta_gradient_matches_finite_differences(downsample):
    fm = helpers.tiny_conv(downsample=downsample)
    learner, meta = _maml(fm)
    tasks = helpers.random_tasks(dtype=tf.float64)
    grads = _applied_gradient(meta, tasks, second_order=True)
    rng = np.random.default_rng(0)
    eps = 1e-5
    checked = 0
    for var, grad in zip(meta.variables, grads):
        if fm.group_of[var.path] != "weights":
            continue
        flat = var.numpy().reshape(-1)
        for i in rng.choice(flat.size, size=min(3, flat.size), replace=False):
            orig = flat[i]
            values = []
            for sign in (1, -1):
                flat[i] = orig + sign * eps
                var.assign(flat.reshape(var.shape))
                values.append(float(_meta_loss(learner, tasks)))
            flat[i] = orig
            var.assign(flat.reshape(var.shape))
            fd = (values[0] - values[1]) / (2 * eps)
            np.testing.assert_allclose(grad.numpy().reshape(-1)[i], fd, rtol=1e-4, atol=1e-7)
            checked += 1
    assert checked >= 9


def test_first_order_equals_stop_gradient_form():
    fm = helpers.tiny_conv()
    learner, meta = _maml(fm)
    tasks = helpers.random_tasks(dtype=tf.float64)
    grads = _applied_gradient(meta, tasks, second_order=False)
    # FOMAML: the gradient of the query loss at the adapted weights, averaged over tasks.
    expected = [tf.zeros_like(v) for v in meta.variables]
    for b in range(2):
        task = {k: v[b] for k, v in tasks.items()}
        result = learner.adapt(task, second_order=False)
        adapted = {p: tf.stop_gradient(v) for p, v in result.params.items()}
        with tf.GradientTape() as tape:
            tape.watch(list(adapted.values()))
            out, _ = fm(adapted, None, task["query_x"], training=True, step=1)
            loss, _ = inner.loss_and_metric("classification", out, task["query_y"])
        g = tape.gradient(loss, adapted)
        expected = [e + g.get(v.path, tf.zeros_like(v)) / 2 for e, v in zip(expected, meta.variables)]
    for v, got, want in zip(meta.variables, grads, expected):
        if fm.group_of[v.path] == "weights":
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=v.path)
    second = _applied_gradient(meta, tasks, second_order=True)
    assert any(not np.allclose(a, b) for a, b in zip(grads, second))


def test_tf_function_equals_eager():
    fm = helpers.tiny_conv()
    _, meta = _maml(fm)
    tasks = helpers.random_tasks(dtype=tf.float64)
    eager = _applied_gradient(meta, tasks, second_order=True)
    compiled = tf.function(lambda t: _applied_gradient(meta, t, second_order=True))(tasks)
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_lslr_rates_receive_meta_gradients():
    fm = helpers.tiny_conv()
    lslr = rules.LSLR(fm.paths_of("weights"), 2, 0.2)
    learner = inner.TaskLearner(fm, {"weights": lslr}, 2)
    meta = learners.MAML(learner, keras.optimizers.SGD(1.0))
    assert all(any(v is w for w in meta.variables) for v in lslr.variables)
    grads = _applied_gradient(meta, helpers.random_tasks(dtype=tf.float64), second_order=True)
    lslr_grads = dict(zip(lslr.rates, grads[-len(lslr.variables):]))
    # Conv biases feed batch norm, which cancels them: their rates get no signal.
    kernels = [p for p in lslr_grads if p.endswith("kernel")]
    assert len(kernels) == 3
    assert all(np.all(np.abs(lslr_grads[p].numpy()) > 0) for p in kernels)
    np.testing.assert_allclose(lslr.rates[fm.paths_of("weights")[0]].numpy(), [0.2, 0.2])
