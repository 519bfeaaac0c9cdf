"""Reptile's update against its formula; the no-meta-learning reference."""

import numpy as np
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
