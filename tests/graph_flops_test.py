"""tfmetanas.graph_flops counts the FLOPs of traced graphs; checked against hand counts."""

import collections

import pytest
import tensorflow as tf

from tfmetanas import errors, graph_flops
from tfmetanas.experiment.defaults import base_config
from tfmetanas.meta import algorithms
from tfmetanas.models import params as params_lib
from tfmetanas.models import zoo


def test_conv_and_dense_forward_and_backward_by_hand():
    # conv 3x3, 1 -> 4 channels, on 2 images of 8x8 ('SAME'), then a dense layer to 3 outputs.
    x = tf.random.normal([2, 8, 8, 1])
    w = tf.random.normal([3, 3, 1, 4])
    d = tf.random.normal([256, 3])

    @tf.function
    def step(x, w, d):
        with tf.GradientTape() as tape:
            tape.watch([w, d])
            y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"))
            z = tf.matmul(tf.reshape(y, [2, 256]), d)
            loss = tf.reduce_sum(z**2)
        return loss, tape.gradient(loss, [w, d])

    by_type = collections.Counter()
    flops = graph_flops.function_flops(step, x, w, d, by_type=by_type)
    conv = 2 * (2 * 8 * 8 * 4) * (3 * 3 * 1)  # 9,216: outputs x taps x input channels
    dense = 2 * 2 * 3 * 256  # 3,072
    assert by_type == {
        "Conv2D": conv,
        "Conv2DBackpropFilter": conv,  # dL/dw; dL/dx is never computed (x is not watched)
        "MatMul": 3 * dense,  # forward, dL/dd, dL/dy
    }
    assert flops == 2 * conv + 3 * dense


def test_conv2d_forward_matches_tf_profiler():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [3, 10, 10, 2])
        w = tf.compat.v1.placeholder(tf.float32, [5, 5, 2, 6])
        tf.identity(tf.nn.conv2d(x, w, 2, "SAME"))
        profile = tf.compat.v1.profiler.profile(
            graph, options=tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        )
    ours = sum(graph_flops.op_flops(op) for op in graph.get_operations())
    assert ours == 2 * (3 * 5 * 5 * 6) * (5 * 5 * 2)
    assert ours == profile.total_float_ops


def test_depthwise_while_loop_and_cond():
    x = tf.random.normal([2, 8, 8, 3])
    k = tf.random.normal([3, 3, 3, 2])
    a = tf.random.normal([16, 4])

    @tf.function
    def step(x, k, a):
        def body(i, acc):
            return i + 1, acc + tf.reduce_sum(tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME"))

        _, acc = tf.while_loop(lambda i, acc: i < 5, body, (tf.constant(0), tf.zeros([])))
        big = tf.cond(
            acc > 0, lambda: tf.matmul(a, a, transpose_b=True), lambda: tf.zeros([16, 16])
        )
        return acc, big

    by_type = collections.Counter()
    flops = graph_flops.function_flops(step, x, k, a, by_type=by_type)
    depthwise = 2 * (2 * 8 * 8 * 6) * (3 * 3)  # per call: outputs x taps
    matmul = 2 * 16 * 16 * 4  # the more expensive branch
    assert by_type == {"DepthwiseConv2dNative": 5 * depthwise, "MatMul": matmul}
    assert flops == 5 * depthwise + matmul


def test_while_loop_with_a_dynamic_bound_is_refused():
    @tf.function
    def step(x, n):
        return tf.while_loop(
            lambda i, y: i < n, lambda i, y: (i + 1, tf.matmul(y, y)), (tf.constant(0), x)
        )

    with pytest.raises(errors.ConfigError, match="while loop"):
        graph_flops.function_flops(step, tf.ones([2, 2]), tf.constant(3))


def test_unknown_shapes_are_refused():
    @tf.function(input_signature=[tf.TensorSpec([None, 4])])
    def step(x):
        return tf.matmul(x, tf.ones([4, 2]))

    with pytest.raises(errors.ConfigError, match="not static"):
        graph_flops.function_flops(step)


@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_first_order_meta_step_of_an_mlp_by_hand(algorithm):
    """A 1-h-1 MLP, one inner step, first order: every matmul of the meta-step counted by hand.

    A forward pass on n examples costs 2nh (1 -> h) + 2nh (h -> 1) = 4nh; its
    backward pass 6nh (dL/dW2, dL/da1, dL/dW1; no dL/dx). Per task: the inner
    step on the support set (10 n h), the query forward (4 m h) and, for
    MAML, the query backward to the meta-parameters (6 m h).
    """
    h, n, m, batch = 7, 5, 3, 4
    config = base_config()
    config.data.source = "sinusoid"
    config.model.name = "mlp"
    config.model.hidden = (h,)
    config.inner.steps, config.inner.lr = 1, 0.01
    config.meta.algorithm = algorithm
    config.meta.second_order = False
    if algorithm == "reptile":
        config.meta.step_sizes = {"weights": 1.0}
    model = zoo.build_model(config.model, (1,), 1, seed=0)
    algo = algorithms.build_algorithm(config, params_lib.FunctionalModel(model), "regression")
    algo.meta_learner.build()
    tasks = {
        "support_x": tf.random.normal([batch, n, 1]),
        "support_y": tf.random.normal([batch, n, 1]),
        "query_x": tf.random.normal([batch, m, 1]),
        "query_y": tf.random.normal([batch, m, 1]),
    }
    step = tf.function(lambda t, i: algo.meta_learner.replica_step(t, i, second_order=False))
    flops = graph_flops.function_flops(step, tasks, tf.constant(0, tf.int64))
    per_task = 10 * n * h + 4 * m * h + (6 * m * h if algorithm == "maml" else 0)
    assert flops == batch * per_task
