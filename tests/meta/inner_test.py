"""The task learner's inner mini-batches (Reptile's inner loop)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tfmetanas import errors
from tfmetanas.meta import inner, rules
from tfmetanas.models import params as params_lib


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


def test_shared_constants_are_one_node_per_graph_value_and_dtype():
    made = {}

    @tf.function(autograph=False)
    def f(x):
        with tf.control_dependencies([tf.debugging.assert_positive(x)]):
            made["a"] = params_lib.shared_constant([2, 3])
        made["b"] = params_lib.shared_constant([2, 3])
        made["c"] = params_lib.shared_constant([2, 3], tf.float32)
        made["d"] = params_lib.shared_constant(0)
        return dict(made)

    f.get_concrete_function(tf.constant(1.0))
    assert made["a"] is made["b"]  # One node for the value...
    assert made["c"] is not made["a"] and made["c"].dtype == tf.float32  # ... per dtype.
    # Made outside the control dependencies of its first use, so any use may share it.
    assert not made["a"].op.control_inputs and made["a"].op.type == "Const"
    out = f(tf.constant(1.0))
    np.testing.assert_array_equal(out["a"], [2, 3])
    assert out["a"].dtype == tf.int32 and int(out["d"]) == 0
    # Each graph has its own.
    g = tf.function(lambda: params_lib.shared_constant([2, 3]), autograph=False)
    assert g.get_concrete_function().graph is not made["a"].graph
    # Eagerly, an ordinary constant; values convert by TensorFlow's rules.
    np.testing.assert_array_equal(params_lib.shared_constant([[1, 2]], tf.float32), [[1, 2]])
    with pytest.raises(TypeError):
        params_lib.shared_constant(1.5)
    # Under a tf.distribute strategy, whose replicas share one graph, each use has its own.
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        h = tf.function(lambda: params_lib.shared_constant(3) is params_lib.shared_constant(3))
        assert not h()


def test_unpacking_makes_one_shape_constant_per_distinct_shape():
    values = {f"w{i}": tf.ones((3, 2)) for i in range(5)}
    values.update({f"b{i}": tf.ones((2,)) for i in range(5)})
    layout = params_lib.Packing(values)

    @tf.function(autograph=False)
    def unpack(flat):
        return layout.unpack(flat)

    graph = unpack.get_concrete_function(layout.pack(values)).graph
    shapes = [tf.make_ndarray(op.get_attr("value")).tolist()
              for op in graph.get_operations() if op.type == "Const"]
    assert shapes.count([3, 2]) == shapes.count([2]) == 1


def test_packing_an_unpacking_again_gives_back_the_vector():
    values = {"a": tf.reshape(tf.range(6.0), (2, 3)), "b": tf.range(4.0) + 10.0}
    layout = params_lib.Packing(values)
    flat = layout.pack(values)

    @tf.function(autograph=False)
    def round_trip(flat):
        unpacked = layout.unpack(flat)
        changed = dict(unpacked, b=unpacked["b"] * 2.0)
        swapped = params_lib.Packing({"b": values["b"], "a": values["a"]})
        return (layout.pack(unpacked), layout.pack(changed),
                swapped.pack(unpacked), layout.pack(dict(unpacked)))

    same, changed, swapped, copied = round_trip(flat)
    graph = round_trip.get_concrete_function(flat).graph
    # The untouched unpacking is packed back as the vector itself (one concat:
    # the changed dict's; the swapped order's; not the plain round trip's).
    assert sum(op.type == "ConcatV2" for op in graph.get_operations()) == 2
    np.testing.assert_array_equal(same.numpy(), flat.numpy())
    np.testing.assert_array_equal(copied.numpy(), flat.numpy())
    np.testing.assert_array_equal(changed.numpy(), [0, 1, 2, 3, 4, 5, 20, 22, 24, 26])
    np.testing.assert_array_equal(swapped.numpy(), [10, 11, 12, 13, 0, 1, 2, 3, 4, 5])
    # Eagerly there is nothing to look up: an ordinary round trip.
    np.testing.assert_array_equal(layout.pack(layout.unpack(flat)).numpy(), flat.numpy())


def test_while_loop_adam_equals_unrolled_steps_and_rule_states_are_optional():
    # The loop starts element-wise rules' states packed; the unrolled steps do not pack.
    fm = helpers.tiny_conv(bn={"affine_group": "weights"})
    learner = inner.TaskLearner(fm, {"weights": rules.Adam(0.01)}, 3)
    task = {k: v[0] for k, v in helpers.random_tasks(batch=1, ways=3, shots=2).items()}
    loop = learner.adapt(task, use_while_loop=True, track_all_steps=False)
    unrolled = learner.adapt(task, use_while_loop=False, track_all_steps=False)
    for path in unrolled.params:
        np.testing.assert_allclose(loop.params[path].numpy(), unrolled.params[path].numpy(),
                                   rtol=1e-5, atol=1e-6, err_msg=path)
    for a, b in zip(tf.nest.flatten(loop.rule_states), tf.nest.flatten(unrolled.rule_states)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    lean = learner.adapt(task, use_while_loop=True, keep_rule_states=False)
    assert lean.rule_states is None
    np.testing.assert_allclose(lean.query_losses.numpy(), loop.query_losses.numpy(), rtol=1e-6)


def test_step_rows_slice_python_steps_and_gather_tensor_steps():
    table = tf.reshape(tf.range(12.0), (4, 3))
    for step in (0, 2, 3, 7):  # past the last row: the last row
        want = table[min(step, 3)].numpy()
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(table)
            static = params_lib.step_row(table, step)
            dynamic = params_lib.step_row(table, tf.constant(step))
            loss_s, loss_d = tf.reduce_sum(static * [1.0, 2.0, 3.0]), tf.reduce_sum(dynamic * [1.0, 2.0, 3.0])
        np.testing.assert_array_equal(static.numpy(), want)
        np.testing.assert_array_equal(dynamic.numpy(), want)
        np.testing.assert_array_equal(tf.convert_to_tensor(tape.gradient(loss_s, table)).numpy(),
                                      tf.convert_to_tensor(tape.gradient(loss_d, table)).numpy())
        one_hot = params_lib.step_one_hot(step, 4, tf.float32)
        np.testing.assert_array_equal(one_hot.numpy(),
                                      params_lib.step_one_hot(tf.constant(step), 4, tf.float32))
        assert one_hot.shape == (4, 1) and float(one_hot[min(step, 3), 0]) == 1.0
        for s in (step, tf.constant(step)):
            np.testing.assert_array_equal(
                params_lib.step_one_hot(s, 4, tf.float32, complement=True), 1.0 - one_hot)


def test_static_step_rows_of_a_graph_share_their_bound_constants():
    table = tf.reshape(tf.range(12.0), (4, 3))

    @tf.function(autograph=False)
    def rows(table):
        return [params_lib.step_row(table, step) for step in (0, 1, 0, 1, 9)]

    graph = rows.get_concrete_function(table).graph
    consts = [op for op in graph.get_operations() if op.type == "Const"]
    # The values [0], [1], [2], [3] and [4] (bounds; [1] the strides too): one node each,
    # not three per call.
    assert len(consts) == 5
    for got, step in zip(rows(table), (0, 1, 0, 1, 9)):
        np.testing.assert_array_equal(got, table[min(step, 3)])
