"""meta.parallel_tasks: tasks of a meta-batch overlap, the results do not change."""

import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tfmetanas import errors
from tfmetanas.meta import inner, learners, rules


def _run(kind, parallel_tasks, second_order):
    tf.keras.utils.set_random_seed(3)
    fm = helpers.tiny_conv(bn={"affine_group": "weights"})
    learner = inner.TaskLearner(fm, {"weights": rules.SGD(0.1)}, 2)
    if kind == "maml":
        meta = learners.MAML(learner, tf.keras.optimizers.SGD(0.5), parallel_tasks=parallel_tasks)
    else:
        meta = learners.Reptile(learner, {"weights": 0.7}, parallel_tasks=parallel_tasks)
    step = tf.function(lambda t: meta.replica_step(t, tf.constant(0), second_order=second_order))
    out = step(helpers.random_tasks(batch=4))
    return out, {v.path: v.numpy() for v in fm.variables()}


@pytest.mark.parametrize("kind,second_order", [("maml", True), ("maml", False), ("reptile", False)])
def test_parallel_tasks_give_the_same_step(kind, second_order):
    out_1, vars_1 = _run(kind, 1, second_order)
    out_3, vars_3 = _run(kind, 3, second_order)
    np.testing.assert_allclose(out_3["meta/loss"], out_1["meta/loss"], rtol=1e-6)
    for path, value in vars_1.items():
        np.testing.assert_allclose(vars_3[path], value, rtol=1e-5, atol=1e-7, err_msg=path)


def test_parallel_tasks_must_be_positive():
    learner = inner.TaskLearner(helpers.tiny_conv(), {"weights": rules.SGD(0.1)}, 1)
    with pytest.raises(errors.ConfigError, match="parallel_tasks"):
        learners.Reptile(learner, {"weights": 1.0}, parallel_tasks=0)
