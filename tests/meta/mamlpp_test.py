"""MAML++: MSL schedule, DA switch, per-step BN (BNRS/BNWB) and LSLR meta-gradients."""

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tests.meta.alfa_test import applied_gradient, finite_difference_check
from tfmetanas.meta import algorithms, inner, learners, mamlpp, rules


@pytest.fixture(autouse=True)
def float64():
    # The dtype policy too: Keras fixes the global policy from floatx at the
    # first layer it builds in the process, so floatx alone is not enough.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize(
    "iteration, expected",
    [
        (0, [0.2, 0.2, 0.2, 0.2, 0.2]),
        (499, [0.2, 0.2, 0.2, 0.2, 0.2]),  # still epoch 0
        (500, [0.18, 0.18, 0.18, 0.18, 0.28]),  # decay 1/5/10 = 0.02 per epoch
        (2500, [0.1, 0.1, 0.1, 0.1, 0.6]),
        (4999, [0.02, 0.02, 0.02, 0.02, 0.92]),  # epoch 9
        (5000, [0.0, 0.0, 0.0, 0.0, 1.0]),  # after msl_epochs: last step only
        (10**6, [0.0, 0.0, 0.0, 0.0, 1.0]),
    ],
)
def test_msl_weights_follow_the_schedule(iteration, expected):
    schedule = mamlpp.MSLSchedule(5, msl_epochs=10, iterations_per_epoch=500)
    weights = schedule(tf.constant(iteration, tf.int64)).numpy()
    np.testing.assert_allclose(weights, expected, atol=1e-12)
    assert weights.sum() == pytest.approx(1.0)


def test_msl_weights_floor_and_sum():
    # 100 epochs: the non-final weights reach their floor 0.03/N at epoch 97.
    n, epochs = 5, 100
    np.testing.assert_allclose(
        mamlpp.msl_weights(98 * 10, n, epochs, iterations_per_epoch=10),
        [0.006, 0.006, 0.006, 0.006, 0.976], atol=1e-12,
    )
    compiled = tf.function(lambda i: mamlpp.msl_weights(i, n, epochs, 10))
    for it in range(0, 1200, 37):
        w = compiled(tf.constant(it, tf.int64)).numpy()
        assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
    np.testing.assert_allclose(mamlpp.msl_weights(0, 1, 10), [1.0])
    np.testing.assert_allclose(mamlpp.msl_weights(0, 3, 0), [0.0, 0.0, 1.0])


def _config(**meta):
    return ml_collections.ConfigDict({
        "inner": {"rule": "lslr", "steps": 2, "lr": 0.1},
        "meta": {"algorithm": "maml", "optimizer": "sgd", "lr": 1.0, **meta},
        "train": {"steps": 10},
    })


def test_derivative_order_annealing_switches_at_configured_iteration():
    fm = helpers.tiny_conv()
    algorithm = algorithms.build_algorithm(
        _config(second_order=True, first_order_until=3), fm, "classification"
    )
    assert [algorithm.second_order(i) for i in range(5)] == [False, False, False, True, True]
    assert algorithm.scalars(3)["meta/second_order"] == 1.0
    first_only = algorithms.build_algorithm(
        _config(second_order=False, first_order_until=3), fm, "classification"
    )
    assert not any(first_only.second_order(i) for i in range(5))


def test_msl_meta_loss_is_weighted_sum_of_step_losses():
    fm = helpers.tiny_conv()
    algorithm = algorithms.build_algorithm(
        _config(msl=True, msl_epochs=2, iterations_per_epoch=1), fm, "classification"
    )
    meta = algorithm.meta_learner
    assert isinstance(meta.step_weights, mamlpp.MSLSchedule)
    metrics = meta.replica_step(helpers.random_tasks(dtype=tf.float64), tf.constant(1, tf.int64))
    weights = mamlpp.msl_weights(1, 2, 2, 1).numpy()
    np.testing.assert_allclose(weights, [0.25, 0.75])
    np.testing.assert_allclose(
        metrics["meta/loss"], np.sum(weights * metrics["query/loss"].numpy()), rtol=1e-10
    )
    np.testing.assert_allclose(algorithm.scalars(1)["msl/weights"], weights)


def test_per_step_bn_is_meta_only_and_keeps_per_step_statistics():
    bn = {"num_steps": 3, "per_step_stats": True, "per_step_affine": True}
    fm = helpers.tiny_conv(bn=bn)
    meta_paths = fm.paths_of("meta")
    assert meta_paths and all(("gamma" in p or "beta" in p) for p in meta_paths)
    gamma = fm.variables_by_path[[p for p in meta_paths if "gamma" in p][0]]
    assert gamma.shape[0] == 3
    learner = inner.TaskLearner(fm, {"weights": rules.LSLR(fm.paths_of("weights"), 2, 0.1)}, 2)
    tasks = helpers.random_tasks(dtype=tf.float64)
    task = {k: v[0] for k, v in tasks.items()}
    result = learner.adapt(task, second_order=True)
    # BNWB: gamma/beta are not adapted by the inner loop.
    assert not set(meta_paths) & set(result.params)
    # BNRS: the two inner steps moved rows 0 and 1 differently; row 2 (never reached) not at all.
    mean_path = [p for p in fm.state_paths if "moving_mean" in p][0]
    before, after = fm.state()[mean_path].numpy(), result.state[mean_path].numpy()
    assert not np.allclose(after[0], before[0]) and not np.allclose(after[1], before[1])
    assert not np.allclose(after[0], after[1])
    np.testing.assert_array_equal(after[2], before[2])
    # Both per-step rows of gamma get meta-gradients (MSL uses every step's query loss).
    meta = learners.MAML(learner, keras.optimizers.SGD(1.0), step_weights=mamlpp.MSLSchedule(2, 10))
    grads = dict(zip([id(v) for v in meta.variables], applied_gradient(meta, tasks)))
    g = grads[id(gamma)].numpy()
    assert np.all(np.abs(g[:2]) > 0) and np.all(g[2] == 0)


def test_lslr_second_order_meta_gradient_matches_finite_differences():
    fm = helpers.tiny_conv(bn={"num_steps": 2, "per_step_stats": True, "per_step_affine": True})
    lslr = rules.LSLR(fm.paths_of("weights"), 2, 0.2)
    learner = inner.TaskLearner(fm, {"weights": lslr}, 2)
    meta = learners.MAML(learner, keras.optimizers.SGD(1.0), step_weights=mamlpp.MSLSchedule(2, 10))
    kernels = [lslr.rates[p] for p in lslr.paths if p.endswith("kernel")]
    checked = finite_difference_check(
        meta, helpers.random_tasks(dtype=tf.float64),
        kernels + fm.variables("meta")[:2] + fm.variables("weights")[:1], per_variable=2,
    )
    assert checked >= 10


class _FixedTasks:
    """A task source stand-in: the same fixed random tasks on every call."""

    def __init__(self, tasks):
        self.tasks = tasks

    def eval_dataset(self, num_tasks, batch_size):
        del num_tasks, batch_size
        yield self.tasks


def test_top_k_ensemble_averages_member_softmax():
    from tfmetanas.experiment import ensemble

    fm = helpers.tiny_conv()
    algorithm = algorithms.build_algorithm(_config(), fm, "classification")
    tasks = helpers.random_tasks(batch=3, dtype=tf.float64)
    rng = np.random.default_rng(0)
    members = {name: [rng.normal(0, 0.5, v.shape) for v in fm.trainable_variables]
               for name in ("a", "b")}

    def restore(name):
        for v, value in zip(fm.trainable_variables, members[name]):
            v.assign(value)

    predictor = ensemble.EnsemblePredictor(algorithm, "classification")
    per_task, member_metrics = ensemble.ensemble_evaluate(
        restore, ["a", "b"], predictor, _FixedTasks(tasks), 3
    )
    probs = []
    for name in ("a", "b"):
        restore(name)
        probs.append([tf.nn.softmax(algorithm.test_adapt({k: v[b] for k, v in tasks.items()})
                                    .query_outputs).numpy() for b in range(3)])
    mean = (np.array(probs[0]) + np.array(probs[1])) / 2
    expected = (mean.argmax(-1) == tasks["query_y"].numpy()).mean(-1)
    np.testing.assert_allclose(per_task, expected)
    assert len(member_metrics) == 2
