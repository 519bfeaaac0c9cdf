"""The task learner's inner mini-batches (Reptile's inner loop)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tfmetanas import errors
from tfmetanas.meta import inner, rules


def test_batch_indices_cover_each_example_once_per_epoch():
    learner = inner.TaskLearner(helpers.tiny_conv(), {"weights": rules.SGD(0.1)}, 5,
                                batch_size=4)
    idx = learner.batch_indices(support_size=6, num_steps=6).numpy()
    assert idx.shape == (6, 4)
    flat = idx.reshape(-1)
    for epoch in range(4):
        assert sorted(flat[6 * epoch: 6 * epoch + 6]) == list(range(6))
    # Whole support set when the batch would not be smaller.
    assert learner.batch_indices(support_size=4, num_steps=3) is None
    full = inner.TaskLearner(helpers.tiny_conv(), {"weights": rules.SGD(0.1)}, 5)
    assert full.batch_indices(support_size=6, num_steps=3) is None


@pytest.mark.parametrize("use_while_loop", [False, True])
def test_mini_batch_steps_equal_manual_sgd(use_while_loop):
    fm = helpers.tiny_conv(bn={"affine_group": "weights"})
    lr, steps = 0.2, 3
    learner = inner.TaskLearner(fm, {"weights": rules.SGD(lr)}, steps, batch_size=2)
    task = {k: v[0] for k, v in helpers.random_tasks(batch=1, ways=3, shots=2).items()}
    result = learner.adapt(task, use_while_loop=use_while_loop)

    idx = learner.batch_indices(6, steps).numpy()
    params, state = fm.params(("weights",)), fm.state()
    for step in range(steps):
        x, y = tf.gather(task["support_x"], idx[step]), tf.gather(task["support_y"], idx[step])
        with tf.GradientTape() as tape:
            tape.watch(list(params.values()))
            logits, state = fm(params, state, x, training=True, step=step)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, params)
        params = {p: params[p] - lr * grads[p] for p in params}
    for path in params:
        np.testing.assert_allclose(result.params[path].numpy(), params[path].numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=path)


def test_negative_batch_size_is_a_config_error():
    with pytest.raises(errors.ConfigError, match="batch_size"):
        inner.TaskLearner(helpers.tiny_conv(), {"weights": rules.SGD(0.1)}, 5, batch_size=-1)
