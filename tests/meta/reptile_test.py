"""Reptile's update against its formula; the no-meta-learning reference."""

import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tfmetanas.meta import inner, learners, rules


def test_reptile_update_equals_formula():
    fm = helpers.tiny_conv(bn={"affine_group": "weights"})
    learner = inner.TaskLearner(fm, {"weights": rules.Adam(1e-2, beta1=0.0)}, 3)
    meta = learners.Reptile(learner, {"weights": 0.7})
    tasks = helpers.random_tasks(batch=3)
    theta = {v.path: tf.identity(v.value) for v in fm.variables("weights")}
    adapted = [
        learner.adapt({k: v[b] for k, v in tasks.items()}, params=dict(theta)).params
        for b in range(3)
    ]
    expected = rules.reptile_interpolation(theta, adapted, 0.7)
    meta.replica_step(tasks, tf.constant(0))
    for v in fm.variables("weights"):
        np.testing.assert_allclose(v.numpy(), expected[v.path].numpy(), rtol=1e-5, atol=1e-6)
    # Groups without a step size are left alone: the meta group here is empty,
    # and BN statistics become the mean over tasks.
    assert not fm.variables("meta")


def test_reptile_moves_groups_by_their_own_step_sizes():
    fm = helpers.tiny_conv(bn={"affine_group": "meta"})
    # Adapt BN gamma/beta too, but give them (as if they were an "arch" group)
    # a different step size: here weights 1.0 and meta 0.0 (frozen).
    learner = inner.TaskLearner(
        fm, {"weights": rules.SGD(0.1), "meta": rules.SGD(0.1)}, 2
    )
    meta = learners.Reptile(learner, {"weights": 1.0, "meta": 0.0})
    before = {v.path: v.numpy() for v in fm.trainable_variables}
    meta.replica_step(helpers.random_tasks(), tf.constant(0))
    for v in fm.trainable_variables:
        moved = not np.allclose(v.numpy(), before[v.path])
        if fm.group_of[v.path] == "meta":
            assert not moved, v.path
        elif v.path.endswith("kernel"):
            assert moved, v.path


def test_no_meta_learning_leaves_variables():
    fm = helpers.tiny_conv()
    meta = learners.NoMetaLearning(inner.TaskLearner(fm, {"weights": rules.SGD(0.1)}, 2))
    before = [v.numpy() for v in fm.trainable_variables]
    out = meta.replica_step(helpers.random_tasks(), tf.constant(0))
    assert np.isfinite(out["meta/loss"].numpy())
    for v, b in zip(fm.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_persistent_adam_state_carries_from_task_to_task():
    """Reptile's inner Adam continues across tasks and meta-steps (the Reptile code)."""
    fm = helpers.tiny_conv(bn={"affine_group": "weights"})
    learner = inner.TaskLearner(
        fm, {"weights": rules.Adam(1e-2, beta1=0.0)}, 3, persistent_rule_state=True
    )
    meta = learners.Reptile(learner, {"weights": 0.7})
    tasks = helpers.random_tasks(batch=2)
    # Starts from a fresh Adam state (count 0, zero moments).
    assert learner.rule_state_variables["weights"].count.numpy() == 0.0
    theta = {v.path: tf.identity(v.value) for v in fm.variables("weights")}
    first = learner.adapt({k: v[0] for k, v in tasks.items()}, params=dict(theta))
    second = learner.adapt(
        {k: v[1] for k, v in tasks.items()}, params=dict(theta), rule_states=first.rule_states
    )
    fresh_second = learner.adapt({k: v[1] for k, v in tasks.items()}, params=dict(theta),
                                 rule_states=learner._fresh_rule_states(theta))
    # Continuing the first task's Adam state changes the second task's adaptation.
    assert not np.allclose(second.params[fm.paths_of("weights")[0]].numpy(),
                           fresh_second.params[fm.paths_of("weights")[0]].numpy())
    expected = rules.reptile_interpolation(theta, [first.params, second.params], 0.7)
    meta.replica_step(tasks, tf.constant(0))
    for v in fm.variables("weights"):
        np.testing.assert_allclose(v.numpy(), expected[v.path].numpy(), rtol=1e-5, atol=1e-6)
    state = learner.rule_state_variables["weights"]
    assert state.count.numpy() == 6.0  # 2 tasks x 3 steps
    for path, nu in second.rule_states["weights"].nu.items():
        np.testing.assert_allclose(state.nu[path].numpy(), nu.numpy(), rtol=1e-6)
    # The next task (meta-test included) starts from the stored state.
    start = learner.initial_rule_states(theta)["weights"]
    assert start.count.numpy() == 6.0


def test_persistent_state_needs_reptile():
    from tfmetanas import errors
    from tfmetanas.experiment import defaults
    from tfmetanas.meta import algorithms

    config = defaults.base_config()
    config.inner.rule = "adam"
    config.inner.persistent_state = True
    config.meta.algorithm = "maml"
    with np.testing.assert_raises(errors.ConfigError):
        algorithms.build_algorithm(config, helpers.tiny_conv(), "classification")


def _compiled_reptile_run(while_loop, search=False):
    """Variables and metrics after 2 compiled Reptile meta-steps."""
    if search:
        from tests.meta import metanas_test

        fm = metanas_test.tiny_search(prune_threshold=0.0)
        learner = metanas_test.tiny_metanas(fm).learner
        step_sizes = {"weights": 1.0, "arch": 0.6}
    else:
        fm = helpers.tiny_conv(bn={"affine_group": "weights"})
        # Adam carried across tasks, inner mini-batches of 4 of the 6 support images.
        learner = inner.TaskLearner(fm, {"weights": rules.Adam(1e-2, beta1=0.0)}, 3,
                                    batch_size=4, persistent_rule_state=True)
        step_sizes = {"weights": 0.7}
    meta = learners.Reptile(learner, step_sizes, while_loop=while_loop)
    step = tf.function(lambda t, i: meta.replica_step(t, i))
    metrics = [step(helpers.random_tasks(batch=2, seed=s), tf.constant(s)) for s in range(2)]
    return ({v.path: v.numpy() for v in fm.variables()},
            [float(m["meta/loss"]) for m in metrics], step)


@pytest.mark.parametrize("search", [False, True], ids=["conv", "metanas"])
def test_while_loop_inner_steps_equal_unrolled(search):
    looped, loss_a, step_a = _compiled_reptile_run(True, search)
    unrolled, loss_b, step_b = _compiled_reptile_run(False, search)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for path, value in unrolled.items():
        np.testing.assert_allclose(looped[path], value, rtol=1e-4, atol=1e-6, err_msg=path)

    # The graph holds one inner step in a loop instead of `inner.steps` copies.
    def num_ops(step):
        graph_def = step.get_concrete_function(helpers.random_tasks(batch=2),
                                               tf.constant(0)).graph.as_graph_def()
        return len(graph_def.node) + sum(len(f.node_def) for f in graph_def.library.function)

    assert num_ops(step_a) < num_ops(step_b)
