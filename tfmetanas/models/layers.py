"""Layers for fast-weight meta-learning.

`MetaBatchNorm` is batch normalisation that knows the inner step
(MAML++, Antoniou et al., ICLR 2019, Section 4 "BNRS" and "BNWB"):

- one set of running statistics per inner step (BNRS), state;
- one set of gamma/beta per inner step (BNWB), in the ``meta`` group: learned
  in the outer loop only, never adapted by the inner loop.

With ``num_steps = 1`` it is ordinary batch normalisation. The current inner
step reaches the layer through the model's ``call(..., step=j)`` argument,
i.e. through `FunctionalModel(...)(params, state, x, step=j)`; it may be a
Python int or a scalar int tensor (inside `tf.while_loop`). Steps beyond the
last learned one reuse the last one (meta-test may run more steps than
meta-training).
"""

import keras
import tensorflow as tf

from tfmetanas.models import params as params_lib


def _scale_or_offset(name, value, x):
    """`value` as a tensor of `x`'s dtype, checked to be one value per channel (or,
    for the scale, a scalar); a length unknown when traced is checked when it runs
    (a length of 1 would broadcast)."""
    value = tf.convert_to_tensor(value, x.dtype)
    channels, shape = x.shape[-1], value.shape
    per_channel = shape.rank == 1 and (
        channels is None or shape[0] is None or shape[0] == channels)
    if not (per_channel or (name == "scale" and shape.rank == 0)):
        raise ValueError(f"normalize_batch: {name} must be "
                         f"{'a scalar or ' if name == 'scale' else ''}"
                         f"one value per channel ({channels}), got shape {shape}.")
    if per_channel and (channels is None or shape[0] is None):
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(value)[0], tf.shape(x)[-1],
                message=f"normalize_batch: {name} needs one value per channel")]):
            value = tf.identity(value)
    return value


def normalize_batch(x, epsilon, scale=None, offset=None):
    """``scale * (x - mean) / sqrt(variance + epsilon) + offset`` with the batch's statistics.

    Statistics over every axis but the last (N, H, W for images). The
    gradients with respect to `x`, `scale` and `offset` are written out (the
    standard batch-norm backward, `scale` folded into the per-channel
    factors): two reductions and a few element-wise ops over the
    activations, about half of what autodiff of the composed ops builds, and
    only ``x - mean`` is kept from the forward
    (``python tools/microbench.py --cases=bn``, 20 BN layers forward and
    backward on 20x28x28x28: 28 against 49 ms, session 8). A scale costs no
    pass of its own, and an affine batch norm's gamma and beta come out of
    the reductions the backward makes anyway (their gradients are
    ``n * inv * mean(dy * centred)`` and ``n * mean(dy)``): no products or
    sums of their own, in the forward, the backward or, for second-order
    meta-learning, the backward's backward. Built from differentiable ops, so
    second-order gradients (nested tapes) are exact as well. Used by the
    DARTS ops' `BatchNorm` and by `MetaBatchNorm`.

    Args:
      x: channels-last activations (NHWC images, or ``[N, C]``).
      epsilon: variance epsilon.
      scale: optional scalar or per-channel ``[C]`` tensor multiplying the
        normalised activations (an op's mixing weight, a BN's gamma; None: 1).
      offset: optional per-channel ``[C]`` tensor added after (a BN's beta).
        Python numbers, lists and arrays are converted to `x`'s dtype; a length
        unknown when traced is checked when the call runs.

    Returns:
      ``(y, mean, variance)``: the scaled and shifted normalised activations and
      the batch statistics (biased variance), which stay differentiable
      through the ordinary ops that computed them.

    Raises:
      ValueError: `scale` or `offset` is neither a scalar nor one value per channel.
    """
    # Without a scale the function takes none: no constant 1 and no gradient for it.
    scales = [] if scale is None else [_scale_or_offset("scale", scale, x)]
    offsets = [] if offset is None else [_scale_or_offset("offset", offset, x)]
    stats = []
    axes = params_lib.shared_constant(list(range(len(x.shape) - 1)))
    per_channel_scale = bool(scales) and scales[0].shape.rank == 1
    # Values per channel; a Python number when the shape is static (the usual
    # case: no size/shape/slice/divide/cast nodes per batch norm).
    count = x.shape[:-1].num_elements()

    @tf.custom_gradient
    def normalize(x, *scale_and_offset):
        # The scale and the offset this call takes (each an empty or one-tensor tuple).
        scale, offset = scale_and_offset[:len(scales)], scale_and_offset[len(scales):]
        # Not tf.nn.moments: it stops the gradient of the mean inside the
        # variance, which would make the statistics' own gradients wrong.
        mean = tf.reduce_mean(x, axis=axes)
        centred = x - mean
        variance = tf.reduce_mean(tf.square(centred), axis=axes)
        inv = tf.math.rsqrt(variance + params_lib.shared_constant(epsilon, x.dtype))
        factor = inv * scale[0] if scale else inv
        stats.extend([mean, variance])

        def grad(dy):
            # y = scale * centred * inv + offset; with a = scale * inv per channel:
            # dx = a * (dy - mean(dy)) - centred * a * inv^2 * mean(dy * centred).
            mean_dy = tf.reduce_mean(dy, axis=axes)
            mean_dy_c = tf.reduce_mean(dy * centred, axis=axes)
            dx = factor * dy - (factor * mean_dy + centred * (factor * tf.square(inv) * mean_dy_c))
            if not (scale or offset):
                return dx
            n = params_lib.shared_constant(count, dy.dtype) if count is not None else tf.cast(
                tf.size(dy) // tf.shape(dy)[-1], dy.dtype)
            dscale = []
            if scale:
                dscale = [inv * mean_dy_c * n]  # sum(dy * centred * inv) per channel
                if not per_channel_scale:
                    dscale = [tf.reduce_sum(dscale[0], axis=params_lib.shared_constant(0))]
            return (dx, *dscale, *[mean_dy * n for _ in offset])  # doffset = sum(dy)

        y = centred * factor
        return (y + offset[0] if offset else y), grad

    y = normalize(x, *scales, *offsets)
    return y, stats[0], stats[1]


def depthwise_conv(x, kernel, stride):
    """Undilated 'SAME' depthwise convolution, as `tf.nn.depthwise_conv2d`.

    The op itself: `tf.nn.depthwise_conv2d` wraps it for dilation and adds
    shape and dilation constants that nothing reads, traced and then pruned
    (372 of the METANAS after-warm-up step's 24,648 nodes). Same op, same
    gradients. Used by the DARTS operations and the supernets.
    """
    return tf.raw_ops.DepthwiseConv2dNative(
        input=x, filter=kernel, strides=[1, stride, stride, 1], padding="SAME")


def dilated_depthwise_conv(x, kernel, rate):
    """'SAME' depthwise convolution at stride 1 with dilation `rate`, as
    ``tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME", dilations=[rate] * 2)``.

    The same three ops as TensorFlow's (space-to-batch with the padding of a
    dilated 'SAME' filter, rounded up to a multiple of the rate; the undilated
    'VALID' convolution; batch-to-space, cropping the rounding), with the
    paddings worked out in Python for a static shape: no shape, rate and
    padding constants of their own (about 10 per call). Falls back to
    `tf.nn.depthwise_conv2d` when the spatial size is unknown when traced.
    """
    rate = int(rate)
    size, window = x.shape[1:3], tf.TensorShape(kernel.shape)[:2]
    if rate == 1 or not (size.is_fully_defined() and window.is_fully_defined()):
        return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME", dilations=[rate] * 2)
    paddings, crops = [], []
    for extent, k in zip(size.as_list(), window.as_list()):
        total = (int(k) - 1) * rate
        start, end = total // 2, total - total // 2
        extra = -(extent + total) % rate
        paddings.append([start, end + extra])
        crops.append([0, extra])
    shared = params_lib.shared_constant
    block = shared([rate, rate])
    y = tf.raw_ops.SpaceToBatchND(input=x, block_shape=block, paddings=shared(paddings))
    y = tf.raw_ops.DepthwiseConv2dNative(input=y, filter=kernel, strides=[1, 1, 1, 1],
                                         padding="VALID")
    return tf.raw_ops.BatchToSpaceND(input=y, block_shape=block, crops=shared(crops))


def pointwise_conv(x, kernel, stride=1):
    """1x1 'SAME' convolution, as one matrix product over the pixels.

    The same function as ``tf.nn.conv2d(x, kernel, stride, "SAME")`` for a
    ``[1, 1, in, out]`` kernel. A strided one reads exactly the subsampled
    pixels (no padding), so it subsamples first: this also avoids TF 2.21's
    oneDNN gradient of strided 1x1 convolutions on even inputs >= 16 px, which
    corrupts the heap (docs/metanas.md). With few channels (the DARTS search network's
    28-112) oneDNN's 1x1 convolution gradients are slower than the two
    products of `tf.matmul`'s: forward and backward on 20x28x28x28, one
    thread, 0.96 against 1.19 ms per layer, and as fast or faster on every
    supernet shape measured (``python tools/microbench.py --cases=pointwise
    --threads=1``; docs/performance.md, "Session 15"). Used by the DARTS
    operations and the supernets; differentiable to any order.

    Args:
      x: NHWC activations.
      kernel: a ``[1, 1, in, out]`` kernel (tensor or variable); ``in`` and
        ``out`` may be unknown when traced (a supernet's gathered candidate
        weights), the product then reads the shapes when it runs.
      stride: an int, or ``(rows, columns)``.
    """
    kernel_shape = tf.TensorShape(kernel.shape)  # Keras variables give a tuple.
    if kernel_shape.rank != 4 or tuple(kernel_shape[:2]) != (1, 1):
        raise ValueError(f"pointwise_conv takes a [1, 1, in, out] kernel, got {kernel_shape}.")
    cin, cout = kernel_shape[-2], kernel_shape[-1]
    if None not in (cin, x.shape[-1]) and x.shape[-1] != cin:
        raise ValueError(f"pointwise_conv: input with {x.shape[-1]} channels, kernel for {cin}.")
    rows, columns = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if (rows, columns) != (1, 1):
        x = x[:, ::rows, ::columns, :]
    shape = params_lib.shared_constant
    if cin is None or cout is None:
        # Channel counts known only when the call runs (a supernet's gathered
        # candidate weights, `supernet.Choice`): the same product, shapes read.
        matrix = tf.reshape(kernel, tf.shape(kernel)[2:])
        y = tf.matmul(tf.reshape(x, tf.stack([-1, tf.shape(x)[-1]])), matrix)
        out_shape = tf.concat([tf.shape(x)[:-1], tf.shape(matrix)[1:]], axis=0)
        y = tf.reshape(y, out_shape)
        y.set_shape(x.shape[:-1].concatenate([cout]))
        return y
    y = tf.matmul(tf.reshape(x, shape([-1, cin])), tf.reshape(kernel, shape([cin, cout])))
    leading = x.shape[:-1]
    if leading.is_fully_defined():
        out_shape = shape([*leading.as_list(), cout])
    else:
        out_shape = tf.concat([tf.shape(x)[:-1], [cout]], axis=0)
    return tf.reshape(y, out_shape)


class MetaBatchNorm(keras.layers.Layer):
    """Batch normalisation with optional per-step statistics and affine weights.

    Args:
      num_steps: number of inner steps that get their own statistics/weights.
      per_step_stats: BNRS: running statistics per step.
      per_step_affine: BNWB: gamma/beta per step.
      affine_group: parameter group of gamma/beta ("meta": outer loop only,
        the MAML++ reference default; "weights": adapted in the inner loop).
      momentum: running statistics decay (Keras convention: new = m * old +
        (1 - m) * batch; PyTorch's momentum 0.1 is 0.9 here).
      epsilon: variance epsilon.
      center, scale: whether beta / gamma exist.
    """

    def __init__(
        self,
        num_steps=1,
        per_step_stats=False,
        per_step_affine=False,
        affine_group="meta",
        momentum=0.9,
        epsilon=1e-5,
        center=True,
        scale=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_steps = int(num_steps)
        self.per_step_stats = bool(per_step_stats)
        self.per_step_affine = bool(per_step_affine)
        self.affine_group = affine_group
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center, self.scale = center, scale

    def build(self, input_shape):
        channels = int(input_shape[-1])
        stat_rows = self.num_steps if self.per_step_stats else 1
        affine_rows = self.num_steps if self.per_step_affine else 1
        if self.scale:
            self.gamma = params_lib.add_param(
                self, "gamma", (affine_rows, channels), "ones", group=self.affine_group
            )
        if self.center:
            self.beta = params_lib.add_param(
                self, "beta", (affine_rows, channels), "zeros", group=self.affine_group
            )
        self.moving_mean = self.add_weight(
            name="moving_mean", shape=(stat_rows, channels), initializer="zeros", trainable=False
        )
        self.moving_variance = self.add_weight(
            name="moving_variance", shape=(stat_rows, channels), initializer="ones", trainable=False
        )

    def _row(self, table, rows, step):
        return params_lib.step_row(table, 0 if rows == 1 else step, rows)

    def call(self, x, training=False, step=0):
        stat_rows = self.num_steps if self.per_step_stats else 1
        affine_rows = self.num_steps if self.per_step_affine else 1
        gamma = self._row(self.gamma, affine_rows, step) if self.scale else None
        beta = self._row(self.beta, affine_rows, step) if self.center else None
        if training:
            # The batch statistics with a written-out gradient (`normalize_batch`:
            # exact to second order, and a third of the graph autodiff of the
            # composed ops builds, which counts twice in second-order MAML),
            # gamma and beta folded in.
            y, mean, variance = normalize_batch(x, self.epsilon, gamma, beta)
            # Only the row of the current step moves (BNRS): a one-hot blend
            # works for Python and tensor steps alike.
            select = params_lib.step_one_hot(step, stat_rows, x.dtype)
            decay = params_lib.shared_constant(1.0 - self.momentum, x.dtype) * select
            self.moving_mean.assign(
                self.moving_mean - decay * (self.moving_mean - tf.stop_gradient(mean))
            )
            self.moving_variance.assign(
                self.moving_variance - decay * (self.moving_variance - tf.stop_gradient(variance))
            )
            return y
        mean = self._row(self.moving_mean, stat_rows, step)
        variance = self._row(self.moving_variance, stat_rows, step)
        return tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.epsilon)

    def get_config(self):
        return {
            **super().get_config(),
            "num_steps": self.num_steps,
            "per_step_stats": self.per_step_stats,
            "per_step_affine": self.per_step_affine,
            "affine_group": self.affine_group,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        }
