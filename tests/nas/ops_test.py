"""Tests of the DARTS / METANAS candidate operations (tfmetanas/nas/ops.py)."""

import pytest
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.models import layers
from tfmetanas.models.params import group_of
from tfmetanas.nas import ops

ALL_OPS = ops.OPERATIONS.names()


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("stride,size", [(1, 8), (2, 7)])
def test_output_shape(name, stride, size):
    op = ops.make_op(name, 4, stride)
    x = tf.random.normal((2, size, size, 4))
    expected = (2, -(-size // stride), -(-size // stride), 4)
    assert tuple(op(x, training=False).shape) == expected
    assert tuple(op(x, training=True).shape) == expected


def test_registry_has_the_few_shot_space_and_lists_names_on_error():
    for name in ops.FEW_SHOT_PRIMITIVES + ("none", "sep_conv_5x5", "dil_conv_5x5"):
        assert name in ops.OPERATIONS
    with pytest.raises(errors.ConfigError, match="sep_conv_3x3"):
        ops.make_op("sep_conv_7x7", 4, 1)


def test_groups_and_affine_free_batch_norm():
    op = ops.make_op("sep_conv_3x3", 4, 1)
    op(tf.zeros((1, 8, 8, 4)))
    # Kernels only: DARTS search BN has no scale/shift.
    assert [v.name for v in op.trainable_variables] == ["kernel"] * 4
    assert all(group_of(v) == "weights" for v in op.trainable_variables)
    assert len(op.non_trainable_variables) == 4  # 2 BNs x (mean, variance)


def test_skip_connect_stride_2_is_factorized_reduce():
    assert isinstance(ops.make_op("skip_connect", 4, 2), ops.FactorizedReduce)
    assert isinstance(ops.make_op("skip_connect", 4, 1), ops.Identity)


def test_strided_dilated_conv_matches_symmetric_padding_reference():
    conv = ops.Conv(3, 3, stride=2, dilation=2)
    x = tf.random.normal((1, 9, 9, 2))
    y = conv(x)
    # Reference: the dilated kernel written out as a 5x5 kernel with zeros,
    # symmetric padding 2 (PyTorch / DARTS), stride 2.
    k = conv.kernel.value
    dilated = tf.scatter_nd([[0], [2], [4]], tf.transpose(k, [0, 1, 2, 3]), [5, 3, 2, 3])
    dilated = tf.transpose(
        tf.scatter_nd([[0], [2], [4]], tf.transpose(dilated, [1, 0, 2, 3]), [5, 5, 2, 3]),
        [1, 0, 2, 3],
    )
    padded = tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]])
    ref = tf.nn.conv2d(padded, dilated, 2, "VALID")
    tf.debugging.assert_near(y, ref, atol=1e-5)


@pytest.mark.parametrize("size", [8, 9])
def test_strided_dilated_depthwise_conv_is_the_conv_of_the_subsampled_input(size):
    # The stride-2 dilation-2 path convolves x[::2, ::2]; reference: stride 1
    # with dilation (symmetric padding 2), then subsampled.
    conv = ops.DepthwiseConv(3, stride=2, dilation=2)
    x = tf.random.normal((2, size, size, 3))
    y = conv(x)
    ref = tf.nn.depthwise_conv2d(x, conv.kernel.value, [1, 1, 1, 1], "SAME", dilations=[2, 2])
    tf.debugging.assert_near(y, ref[:, ::2, ::2, :], atol=1e-5)


@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 9)])
def test_depthwise_conv_is_tf_nn_depthwise_conv2d_in_fewer_nodes(stride, size):
    x = tf.random.normal((2, size, size, 3))
    k = tf.random.normal((3, 3, 3, 1))

    def through(conv):
        @tf.function(autograph=False)
        def f(x, k):
            with tf.GradientTape() as tape:
                tape.watch([x, k])
                y = conv(x, k)
                loss = tf.reduce_sum(tf.sin(y))
            return [y, *tape.gradient(loss, [x, k])]
        return f

    ours = through(lambda x, k: layers.depthwise_conv(x, k, stride))
    ref = through(lambda x, k: tf.nn.depthwise_conv2d(x, k, [1, stride, stride, 1], "SAME"))
    for a, b in zip(ours(x, k), ref(x, k)):
        tf.debugging.assert_near(a, b, atol=1e-5)

    def nodes(f):
        return len(f.get_concrete_function(x, k).graph.as_graph_def().node)

    assert nodes(ours) < nodes(ref)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("cin,cout", [(3, 5), (6, 6)])
def test_pointwise_conv_is_the_1x1_conv_to_second_order(cin, cout, graph):
    x = tf.random.normal((2, 5, 7, cin))
    k = tf.random.normal((1, 1, cin, cout))

    def derivatives(conv):
        # Output, first derivatives, and the derivatives of a first-derivative
        # norm (what a second-order meta-gradient takes).
        def f(x, k):
            with tf.GradientTape() as outer:
                outer.watch([x, k])
                with tf.GradientTape() as inner:
                    inner.watch([x, k])
                    y = conv(x, k)
                    loss = tf.reduce_sum(tf.sin(y))
                dx, dk = inner.gradient(loss, [x, k])
                norm = tf.reduce_sum(dx * dx) + tf.reduce_sum(tf.cos(dk))
            return [y, dx, dk, *outer.gradient(norm, [x, k])]
        return tf.function(f, autograph=False) if graph else f

    ours = derivatives(layers.pointwise_conv)
    ref = derivatives(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
    for a, b in zip(ours(x, k), ref(x, k)):
        assert a.shape == b.shape
        tf.debugging.assert_near(a, b, atol=1e-4, rtol=1e-4)


def test_pointwise_conv_with_an_unknown_batch_size():
    k = tf.random.normal((1, 1, 3, 4))
    f = tf.function(lambda x: layers.pointwise_conv(x, k), autograph=False,
                    input_signature=[tf.TensorSpec([None, None, 6, 3])])
    x = tf.random.normal((2, 5, 6, 3))
    y = f(x)
    assert y.shape == (2, 5, 6, 4)
    assert f.get_concrete_function().structured_outputs.shape.as_list() == [None, None, 6, 4]
    tf.debugging.assert_near(y, tf.nn.conv2d(x, k, 1, "SAME"), atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv_with_channel_counts_known_only_when_it_runs(stride):
    # A supernet's gathered candidate weights (supernet.Choice, selection="gather").
    f = tf.function(lambda x, k: layers.pointwise_conv(x, k, stride), autograph=False,
                    input_signature=[tf.TensorSpec([2, 6, 6, None]),
                                     tf.TensorSpec([1, 1, None, None])])
    for cin, cout in [(3, 5), (6, 2)]:
        x, k = tf.random.normal((2, 6, 6, cin)), tf.random.normal((1, 1, cin, cout))
        tf.debugging.assert_near(f(x, k), tf.nn.conv2d(x, k, stride, "SAME"), atol=1e-5)
    assert f.get_concrete_function().structured_outputs.shape.as_list() == [
        2, 6 // stride, 6 // stride, None]


def test_pointwise_conv_refuses_other_kernels_and_channel_counts():
    x = tf.zeros((2, 4, 4, 3))
    for kernel in (tf.zeros((3, 3, 3, 4)), tf.zeros((3, 4))):
        with pytest.raises(ValueError, match=r"\[1, 1, in, out\] kernel"):
            layers.pointwise_conv(x, kernel)
    with pytest.raises(ValueError, match="3 channels, kernel for 5"):
        layers.pointwise_conv(x, tf.zeros((1, 1, 5, 4)))


@pytest.mark.parametrize("stride", [1, 2])
def test_1x1_convs_of_the_ops_and_supernets_are_matrix_products(stride):
    # ops.Conv and supernet.Conv take the pointwise path (a MatMul, no Conv2D)
    # and compute the same function as the strided 1x1 convolution.
    from tfmetanas.nas import supernet

    x = tf.random.normal((2, 8, 8, 3))
    darts_conv = ops.Conv(4, 1, stride=stride)
    darts_conv(x)
    super_conv = supernet.Conv(3, 4, 1, stride)
    for conv, kernel in [(darts_conv, lambda: darts_conv.kernel.value),
                         (super_conv, lambda: super_conv.kernel)]:
        f = tf.function(lambda x, conv=conv: conv(x), autograph=False)
        y = f(x)
        ref = tf.nn.conv2d(x, kernel(), stride, "SAME")
        tf.debugging.assert_near(y, ref, atol=1e-5)
        ops_in_graph = {n.op for n in f.get_concrete_function(x).graph.as_graph_def().node}
        assert "MatMul" in ops_in_graph and "Conv2D" not in ops_in_graph


@pytest.mark.parametrize("size", [8, 9])
def test_factorized_reduce_reads_even_and_shifted_pixels(size):
    op = ops.FactorizedReduce(4)
    x = tf.random.normal((2, size, size, 3))
    y = op(x, training=False)
    r = tf.nn.relu(x)
    shifted = tf.pad(r[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])
    ref = tf.concat(
        [tf.nn.conv2d(r[:, ::2, ::2, :], op.conv_1.kernel.value, 1, "SAME"),
         tf.nn.conv2d(shifted[:, ::2, ::2, :], op.conv_2.kernel.value, 1, "SAME")], axis=-1)
    tf.debugging.assert_near(y, op.bn(ref, training=False), atol=1e-5)


@pytest.mark.parametrize("scale_kind,shifted", [
    (None, False), ("scalar", False), ("channel", False), ("scalar", True), ("channel", True),
    (None, True)])
@pytest.mark.parametrize("graph", [False, True, "unknown batch"])
@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (6, 3)])
def test_batch_norm_hand_written_gradient_matches_autodiff_to_second_order(
        graph, scale_kind, shifted, shape):
    # A scalar scale is a DARTS op's mixing weight; per-channel scale and offset
    # are an affine batch norm's gamma and beta (MetaBatchNorm, the DARTS stem).
    x = tf.random.stateless_normal(shape, seed=[1, 2]) * 2.0 + 1.0
    v = tf.random.stateless_normal(shape, seed=[3, 4])
    channels = shape[-1]
    s = (tf.constant(0.7) if scale_kind != "channel"
         else tf.constant([0.7, -1.3, 2.1][:channels]))
    b = tf.constant([0.2, -0.5, 1.1][:channels])
    scaled = scale_kind is not None

    def derivatives(normalize, x, s, b):
        with tf.GradientTape() as outer:
            outer.watch([x, s, b])
            with tf.GradientTape() as inner:
                inner.watch([x, s, b])
                y, mean, variance = normalize(x, s, b)
                # The statistics stay differentiable (through the ordinary ops).
                loss = tf.reduce_sum(tf.sin(y) * v) + tf.reduce_sum(mean * variance)
            gx, gs, gb = inner.gradient(loss, [x, s, b])
            gv = tf.reduce_sum(gx * v)
            if scaled:
                gv += tf.reduce_sum(gs * gs * tf.range(1.0, 1.0 + tf.size(gs, tf.float32)))
            if shifted:
                gv += tf.reduce_sum(tf.sin(gb) * gs if scaled else tf.sin(gb))
        hx, hs, hb = outer.gradient(gv, [x, s, b])
        out = [y, gx, hx]
        out += [gs, hs] if scaled else []
        out += [gb, hb] if shifted else []
        return out

    def ours(x, s, b):
        return ops.normalize_batch(x, 1e-5, s if scaled else None, b if shifted else None)

    def reference(x, s, b):
        mean = tf.reduce_mean(x, axis=list(range(len(shape) - 1)))
        variance = tf.reduce_mean(tf.square(x - mean), axis=list(range(len(shape) - 1)))
        y = tf.nn.batch_normalization(x, mean, variance, None, None, 1e-5)
        y = s * y if scaled else y
        return (y + b if shifted else y), mean, variance

    if graph == "unknown batch":
        # Traced with the batch size unknown: the count per channel is computed.
        spec = tf.TensorSpec([None, *shape[1:]], tf.float32)
        got, want = [
            tf.function(lambda x, s, b, f=f: derivatives(f, x, s, b), autograph=False,
                        input_signature=[spec, tf.TensorSpec(s.shape), tf.TensorSpec(b.shape)])(
                x, s, b)
            for f in (ours, reference)]
    elif graph:
        run = tf.function(derivatives, autograph=False)
        got, want = run(ours, x, s, b), run(reference, x, s, b)
    else:
        got, want = derivatives(ours, x, s, b), derivatives(reference, x, s, b)
    assert len(got) == len(want) == 3 + 2 * scaled + 2 * shifted
    for a, b_ in zip(got, want):
        assert a is not None and b_ is not None
        tf.debugging.assert_near(a, b_, atol=1e-4, rtol=1e-4)


def test_batch_norm_refuses_scale_and_offset_of_other_shapes():
    x = tf.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match="offset"):
        ops.normalize_batch(x, 1e-5, offset=tf.constant(1.0))
    with pytest.raises(ValueError, match="scale"):
        ops.normalize_batch(x, 1e-5, tf.ones((2,)))
    with pytest.raises(ValueError, match="offset"):
        ops.normalize_batch(x, 1e-5, None, tf.ones((1, 3)))


def test_batch_norm_takes_python_numbers_and_vectors_of_unknown_length():
    x = tf.random.stateless_normal((4, 3, 3, 2), seed=[5, 6])
    y, _, _ = ops.normalize_batch(x, 1e-5, 0.5)
    want, _, _ = ops.normalize_batch(x, 1e-5, tf.constant(0.5))
    tf.debugging.assert_near(y, want)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([4, 3, 3, None]),
                                                   tf.TensorSpec([None]), tf.TensorSpec([None])])
    def unknown(x, scale, offset):
        return ops.normalize_batch(x, 1e-5, scale, offset)[0]

    scale, offset = tf.constant([2.0, -1.0]), tf.constant([0.5, 0.25])
    got = unknown(x, scale, offset)
    tf.debugging.assert_near(got, ops.normalize_batch(x, 1e-5, scale, offset)[0])
    # A list offset, and the gradients through vectors of unknown length.
    tf.debugging.assert_near(ops.normalize_batch(x, 1e-5, scale, [0.5, 0.25])[0], got)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None]), tf.TensorSpec([None])])
    def gradients(scale, offset):
        with tf.GradientTape() as tape:
            tape.watch([scale, offset])
            y = ops.normalize_batch(x, 1e-5, scale, offset)[0]
            loss = tf.reduce_sum(tf.sin(y))
        return tape.gradient(loss, [scale, offset])

    with tf.GradientTape() as tape:
        tape.watch([scale, offset])
        loss = tf.reduce_sum(tf.sin(ops.normalize_batch(x, 1e-5, scale, offset)[0]))
    for a, b in zip(gradients(scale, offset), tape.gradient(loss, [scale, offset])):
        tf.debugging.assert_near(a, b)
    # One value where two channels need two: refused when it runs, not broadcast.
    with pytest.raises(tf.errors.InvalidArgumentError, match="one value per channel"):
        unknown(x, tf.constant([2.0]), offset)


def test_batch_norm_updates_state_only_in_training():
    bn = ops.BatchNorm()
    x = tf.random.normal((8, 4, 4, 3)) * 3.0 + 1.0
    y = bn(x, training=False)
    tf.debugging.assert_near(y, x / tf.sqrt(1.0 + 1e-5), atol=1e-5)
    bn(x, training=True)
    mean = tf.reduce_mean(x, axis=[0, 1, 2])
    tf.debugging.assert_near(bn.moving_mean.value, 0.1 * mean, atol=1e-5)


def test_run_if_skips_and_hoists_state_updates_in_a_graph():
    bn = ops.BatchNorm()
    x = tf.random.normal((4, 4, 4, 2)) + 5.0
    bn(x)  # build

    @tf.function
    def f(pred):
        return ops.run_if(
            pred,
            lambda: bn(x, training=True),
            lambda: tf.zeros_like(x),
            bn.non_trainable_variables,
        )

    tf.debugging.assert_equal(f(tf.constant(False)), tf.zeros_like(x))
    tf.debugging.assert_equal(bn.moving_mean.value, tf.zeros((2,)))
    f(tf.constant(True))
    assert float(tf.reduce_min(bn.moving_mean.value)) > 0.3


@pytest.mark.parametrize("size,kernel,rate", [
    ((28, 28), (3, 3), 2), ((28, 28), (5, 5), 2), ((7, 7), (5, 5), 2), ((7, 9), (3, 3), 3),
    ((5, 6), (5, 5), 2), ((1, 1), (3, 3), 2), ((6, 5), (2, 5), 3)])
def test_dilated_depthwise_conv_is_tensorflows_op_by_op(size, kernel, rate):
    # The same three ops as tf.nn.depthwise_conv2d with dilations, paddings worked out
    # in Python: the same numbers, forward and backward, to the bit.
    x = tf.random.normal((2, *size, 4), seed=1)
    f = tf.random.normal((*kernel, 4, 1), seed=2)

    def run(conv):
        with tf.GradientTape() as tape:
            tape.watch([x, f])
            y = conv(x, f)
            loss = tf.reduce_sum(y * y)
        return [y, *tape.gradient(loss, [x, f])]

    want = run(lambda x, f: tf.nn.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME",
                                                   dilations=[rate, rate]))
    def ours(x, f):
        return layers.dilated_depthwise_conv(x, f, rate)

    for got in (run(ours), tf.function(run, autograph=False)(ours)):
        for a, b in zip(got, want):
            assert a.shape == b.shape
            tf.debugging.assert_equal(a, b)

    def nodes(conv):
        return len(tf.function(conv).get_concrete_function(x, f).graph.as_graph_def().node)

    assert nodes(ours) < nodes(lambda x, f: tf.nn.depthwise_conv2d(
        x, f, [1, 1, 1, 1], "SAME", dilations=[rate, rate]))


def test_dilated_depthwise_conv_with_a_size_unknown_when_traced():
    f = tf.random.normal((3, 3, 4, 1))
    x = tf.random.normal((2, 9, 7, 4))
    want = tf.nn.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", dilations=[2, 2])
    conv = tf.function(lambda x: layers.dilated_depthwise_conv(x, f, 2),
                       input_signature=[tf.TensorSpec([None, None, None, 4])])
    tf.debugging.assert_equal(conv(x), want)
