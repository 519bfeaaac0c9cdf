"""ALFA: the update against a numpy hand computation, meta-gradients against finite differences."""

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tfmetanas.meta import alfa, algorithms, inner, learners
from tfmetanas.models import params as params_lib
from tfmetanas.models import zoo


@pytest.fixture(autouse=True)
def float64():
    # The dtype policy too: Keras fixes the global policy from floatx at the
    # first layer it builds in the process, so floatx alone is not enough.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def applied_gradient(meta, tasks, second_order=True, iteration=0):
    """The meta-gradient MAML applies (its optimizer is SGD(1)); variables restored."""
    before = helpers.values(meta.variables)
    meta.replica_step(tasks, tf.constant(iteration, tf.int64), second_order=second_order)
    after = helpers.values(meta.variables)
    for v, b in zip(meta.variables, before):
        v.assign(b)
    return [b - a for b, a in zip(before, after)]


def meta_loss(meta, tasks, iteration=0):
    """MAML's meta-loss recomputed from scratch (second order), for finite differences."""
    weights = None if meta.step_weights is None else meta.step_weights(iteration)
    losses = []
    for b in range(tasks["support_x"].shape[0]):
        task = {k: v[b] for k, v in tasks.items()}
        result = meta.learner.adapt(task, second_order=True, track_all_steps=weights is not None)
        losses.append(meta.task_loss(result, weights))
    return float(tf.add_n(losses) / len(losses))


def finite_difference_check(meta, tasks, variables, per_variable=2, eps=1e-5, rtol=1e-4,
                            atol=1e-8, iteration=0, seed=0):
    """Compares MAML's second-order meta-gradient with central differences.

    Checks `per_variable` random entries of every variable in `variables`
    (which must be among `meta.variables`); returns how many were checked.
    """
    grads = dict(zip([id(v) for v in meta.variables],
                     applied_gradient(meta, tasks, iteration=iteration)))
    rng = np.random.default_rng(seed)
    checked = 0
    for var in variables:
        grad = grads[id(var)].numpy().reshape(-1)
        flat = var.numpy().reshape(-1)
        for i in rng.choice(flat.size, size=min(per_variable, flat.size), replace=False):
            orig = flat[i]
            values = []
            for sign in (1, -1):
                flat[i] = orig + sign * eps
                var.assign(flat.reshape(var.shape))
                values.append(meta_loss(meta, tasks, iteration))
            flat[i] = orig
            var.assign(flat.reshape(var.shape))
            fd = (values[0] - values[1]) / (2 * eps)
            np.testing.assert_allclose(grad[i], fd, rtol=rtol, atol=atol, err_msg=var.path)
            checked += 1
    return checked


def _randomize(rule, seed=0, scale=0.3):
    """Random generator weights and post-multipliers (the initial ones make g_phi constant)."""
    rng = np.random.default_rng(seed)
    for v in rule.generator_variables:
        v.assign(rng.normal(0.0, scale, v.shape))
    for v in list(rule.alpha0.values()):
        v.assign(rng.uniform(0.05, 0.2, v.shape))
    for v in list(rule.beta0.values()):
        v.assign(rng.uniform(0.9, 1.1, v.shape))


def _numpy_generator(rule, tau):
    h = tau[None]
    for i, (k, b) in enumerate(zip(rule.kernels, rule.biases)):
        h = h @ k.numpy() + b.numpy()
        if i < rule.num_layers - 1:
            h = np.maximum(h, 0.0)
    return np.split(h[0], 2)


def test_initial_generator_outputs_ones_and_rule_is_sgd():
    rule = alfa.ALFA(["a", "b"], num_steps=3, init_lr=0.1, layers=3)
    params = {"a": tf.constant([1.0, 2.0], tf.float64), "b": tf.constant([[3.0]], tf.float64)}
    grads = {"a": tf.constant([0.5, -1.0], tf.float64), "b": tf.constant([[2.0]], tf.float64)}
    new, _ = rule.apply(0, grads, params, rule.init(params))
    np.testing.assert_allclose(new["a"], [0.95, 2.1])
    np.testing.assert_allclose(new["b"], [[2.8]])
    assert all(params_lib.group_of(v) == "meta" for v in rule.variables)
    assert len(rule.kernels) == 3 and rule.kernels[0].shape == (4, 4)


@pytest.mark.parametrize("layers", [2, 3])
def test_update_equals_numpy_hand_computation(layers):
    # A linear regressor y = x W + b: its MSE gradient is easy to write by hand.
    model = zoo.build_model({"name": "mlp", "hidden": ()}, (2,), 1, seed=0)
    fm = params_lib.FunctionalModel(model)
    paths = fm.paths_of("weights")
    rule = alfa.ALFA(paths, num_steps=2, init_lr=0.1, layers=layers)
    _randomize(rule, seed=layers)
    learner = inner.TaskLearner(fm, {"weights": rule}, 2, kind="regression")
    rng = np.random.default_rng(1)
    task = {k: tf.constant(rng.normal(size=(4, s))) for k, s in
            (("support_x", 2), ("support_y", 1), ("query_x", 2), ("query_y", 1))}
    result = learner.adapt(task)

    theta = {p: fm.variables_by_path[p].numpy().astype(np.float64) for p in paths}
    kernel, bias = sorted(paths, key=lambda p: not p.endswith("kernel"))
    x, y = task["support_x"].numpy(), task["support_y"].numpy()
    for step in range(2):
        r = x @ theta[kernel] + theta[bias] - y
        grads = {kernel: 2.0 / len(x) * x.T @ r, bias: 2.0 / len(x) * r.sum(0)}
        tau = np.array([grads[p].mean() for p in paths] + [theta[p].mean() for p in paths])
        alpha1, beta1 = _numpy_generator(rule, tau)
        for i, p in enumerate(paths):
            alpha = rule.alpha0[p].numpy()[step] * alpha1[i]
            beta = rule.beta0[p].numpy()[step] * beta1[i]
            theta[p] = beta * theta[p] - alpha * grads[p]
    for p in paths:
        np.testing.assert_allclose(result.params[p].numpy(), theta[p], rtol=1e-10, err_msg=p)


def test_generator_and_post_multipliers_receive_meta_gradients():
    fm = helpers.tiny_conv()
    rule = alfa.ALFA(fm.paths_of("weights"), 2, 0.2, layers=3)
    _randomize(rule)
    learner = inner.TaskLearner(fm, {"weights": rule}, 2)
    meta = learners.MAML(learner, keras.optimizers.SGD(1.0))
    assert all(any(v is w for w in meta.variables) for v in rule.variables)
    grads = dict(zip([id(v) for v in meta.variables],
                     applied_gradient(meta, helpers.random_tasks(dtype=tf.float64))))
    for v in rule.generator_variables:
        assert np.any(np.abs(grads[id(v)].numpy()) > 0), v.path
    # Conv biases feed batch norm, which cancels them: their multipliers get no signal.
    for p in fm.paths_of("weights"):
        if p.endswith("kernel"):
            assert np.all(np.abs(grads[id(rule.alpha0[p])].numpy()) > 0), p
            assert np.all(np.abs(grads[id(rule.beta0[p])].numpy()) > 0), p


def test_second_order_meta_gradient_matches_finite_differences():
    fm = helpers.tiny_conv()
    rule = alfa.ALFA(fm.paths_of("weights"), 2, 0.2, layers=2)
    _randomize(rule, scale=0.5)
    learner = inner.TaskLearner(fm, {"weights": rule}, 2)
    meta = learners.MAML(learner, keras.optimizers.SGD(1.0))
    tasks = helpers.random_tasks(dtype=tf.float64)
    checked = finite_difference_check(
        meta, tasks, list(rule.variables) + fm.variables("weights")[:2], per_variable=2
    )
    assert checked >= 20


def _config(**meta):
    config = ml_collections.ConfigDict({
        "inner": {"rule": "alfa", "steps": 2, "eval_steps": 3, "lr": 0.1,
                  "alfa": {"layers": 2}},
        "meta": {"algorithm": "maml", "optimizer": "sgd", "lr": 0.1, **meta},
        "train": {"steps": 10},
    })
    return config


def test_random_init_learns_only_alfa_variables():
    fm = helpers.tiny_conv()
    algorithm = algorithms.build_algorithm(_config(groups=()), fm, "classification")
    rule = algorithm.learner.rules["weights"]
    assert isinstance(rule, alfa.ALFA) and rule.num_layers == 2
    meta = algorithm.meta_learner
    assert {id(v) for v in meta.variables} == {id(v) for v in rule.variables}
    model_before = helpers.values(fm.trainable_variables)
    rule_before = helpers.values(rule.variables)
    meta.replica_step(helpers.random_tasks(dtype=tf.float64), tf.constant(0, tf.int64),
                      second_order=True)
    for v, b in zip(fm.trainable_variables, model_before):
        np.testing.assert_array_equal(v.numpy(), b.numpy(), err_msg=v.path)
    assert any(not np.allclose(v.numpy(), b) for v, b in zip(rule.variables, rule_before))


def test_while_loop_adaptation_matches_unrolled_and_trace():
    fm = helpers.tiny_conv()
    algorithm = algorithms.build_algorithm(_config(), fm, "classification")
    rule = algorithm.learner.rules["weights"]
    _randomize(rule)
    task = {k: v[0] for k, v in helpers.random_tasks(dtype=tf.float64).items()}
    unrolled = algorithm.learner.adapt(task, num_steps=3)
    looped = tf.function(algorithm.test_adapt)(task)
    for p, v in unrolled.params.items():
        np.testing.assert_allclose(looped.params[p], v, rtol=1e-9, atol=1e-12)
    trace = alfa.hyperparameter_trace(algorithm.learner, task)
    kernel = fm.paths_of("weights")[0]
    assert f"alfa/alpha/{kernel}/step_1" in trace and f"alfa/beta/{kernel}/step_0" in trace
    scalars = algorithm.scalars(0)
    assert scalars[f"lr/inner/{kernel}/step_0"] == pytest.approx(
        float(rule.alpha0[kernel].numpy()[0])
    )
