"""Candidate operations of the METANAS / DARTS cell search space (NHWC).

Implements the operation set of METANAS (Elsken et al., CVPR 2020, Sec. 4.1,
the few-shot DARTS space) on top of the DARTS search ops (Liu et al., ICLR
2019, Sec. 2.1 and App. A.1):

- ``max_pool_3x3``, ``avg_pool_3x3``: pooling followed by a BN, as the DARTS
  search network does, so that their scale matches the parametric ops;
- ``skip_connect``: identity, or `FactorizedReduce` on a stride-2 edge;
- ``conv_3x3``, ``conv_1x5_5x1``: ReLU-conv-BN;
- ``sep_conv_3x3`` / ``sep_conv_5x5``: two stacked ReLU-dwconv-pwconv-BN;
- ``dil_conv_3x3`` / ``dil_conv_5x5``: ReLU-dilated dwconv (rate 2)-pwconv-BN;
- ``none``: zeros.

Every BN here is ``affine=False`` (DARTS search): no trainable scale/shift, the
moving statistics are non-trainable state. Every kernel is created with
`add_param(..., group="weights")`.

Ops are looked up by name in `OPERATIONS`, so a search space is a list of names
in a config. Each factory has the signature ``factory(channels, stride, name)``
and returns a Keras layer mapping ``(N, H, W, channels)`` to
``(N, ceil(H / stride), ceil(W / stride), channels)``.

BN statistics and conditional execution: soft pruning (see `darts.py`) runs an
op inside `tf.cond` so that it is really skipped. A BN update made inside a
`tf.cond` branch would be a tensor of the branch graph and cannot be handed back
to `stateless_call`; `assign_state` and `run_if` therefore return the updates as
branch outputs and assign them after the `tf.cond`.
"""

import contextlib

import keras
import tensorflow as tf

from tfmetanas.models.layers import (
    depthwise_conv,
    dilated_depthwise_conv,
    normalize_batch,
    pointwise_conv,
)
from tfmetanas.models.params import add_param
from tfmetanas.registry import Registry

OPERATIONS = Registry("DARTS operation")

# The few-shot space of METANAS (paper Sec. 4.1 / reference code PRIMITIVES_FEWSHOT).
FEW_SHOT_PRIMITIVES = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "conv_1x5_5x1",
    "conv_3x3",
    "sep_conv_3x3",
    "dil_conv_3x3",
)

# The original DARTS CIFAR-10 space (DARTS Sec. 3.1).
DARTS_PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)

_KERNEL_INIT = "he_normal"

# ---------------------------------------------------------------------------
# BN state updates that survive `tf.cond`.

# Trace-time stack of update collectors; each is a list of (variable, value).
_UPDATE_COLLECTORS = []


def assign_state(variable, value):
    """Assigns a non-trainable state value, deferred if inside `run_if`.

    Args:
      variable: a non-trainable Keras variable (BN statistics).
      value: its new value.
    """
    if _UPDATE_COLLECTORS:
        _UPDATE_COLLECTORS[-1].append((variable, value))
    else:
        variable.assign(value)


@contextlib.contextmanager
def _collect_updates():
    updates = []
    _UPDATE_COLLECTORS.append(updates)
    try:
        yield updates
    finally:
        _UPDATE_COLLECTORS.pop()


def run_if(pred, fn, zeros_like, state_variables=()):
    """``fn()`` if `pred` else zeros, computing `fn` only when `pred` holds.

    Uses `tf.cond`, so in eager mode only the taken branch runs, and in a graph
    only the taken branch executes. State updates made by `fn` through
    `assign_state` are returned from the branch and applied after the cond (the
    false branch keeps the current values).

    Args:
      pred: scalar boolean tensor (or python bool).
      fn: zero-argument callable returning a tensor.
      zeros_like: zero-argument callable returning the zeros used when skipped.
      state_variables: the non-trainable variables `fn` may update.

    Returns:
      A tensor.
    """
    if isinstance(pred, bool):
        return fn() if pred else zeros_like()
    state_variables = list(state_variables)

    def _current():
        return [v.value for v in state_variables]

    def true_fn():
        with _collect_updates() as updates:
            out = fn()
        new = {id(v): val for v, val in updates}
        unknown = set(new) - {id(v) for v in state_variables}
        if unknown:
            raise RuntimeError("run_if: fn updated state it did not declare.")
        values = [new.get(id(v), v.value) for v in state_variables]
        return out, values

    def false_fn():
        return zeros_like(), _current()

    out, values = tf.cond(pred, true_fn, false_fn)
    for v, val in zip(state_variables, values):
        assign_state(v, val)
    return out


def run_masked(pred, fn, state_variables=()):
    """``fn()``, with the state updates it makes through `assign_state` kept only if `pred`.

    The companion of `run_if` for soft pruning by masking: the op is computed
    either way (the caller scales its output by zero when `pred` is False), and
    a pruned op leaves its BN statistics as they were, as if it had not run.

    Args:
      pred: scalar boolean tensor.
      fn: zero-argument callable returning a tensor.
      state_variables: the non-trainable variables `fn` may update.

    Returns:
      ``fn()``.
    """
    state_variables = list(state_variables)
    with _collect_updates() as updates:
        out = fn()
    known = {id(v) for v in state_variables}
    for v, value in updates:
        if id(v) not in known:
            raise RuntimeError("run_masked: fn updated state it did not declare.")
        assign_state(v, tf.where(pred, value, v.value))
    return out


def output_zeros(x, channels, stride):
    """Zeros shaped like the output of a `stride` op on `x`."""
    shape = tf.shape(x)
    h = (shape[1] + stride - 1) // stride
    w = (shape[2] + stride - 1) // stride
    return tf.zeros(tf.stack([shape[0], h, w, channels]), dtype=x.dtype)


# ---------------------------------------------------------------------------
# Primitive layers (explicit kernels so every variable carries its group).


class BatchNorm(keras.layers.Layer):
    """Batch normalisation without scale/shift (DARTS search ``affine=False``).

    Moving mean/variance are non-trainable state updated with `assign_state`
    when ``training=True``; the batch statistics normalise in that case
    (transductive), the moving ones otherwise.

    Args:
      momentum: moving-average decay (0.9 = PyTorch momentum 0.1, as DARTS).
      epsilon: variance epsilon (1e-5 as PyTorch).
      affine: adds a trainable ``gamma``/``beta`` (group ``weights``); used by
        the stem only.

    References: Liu et al., DARTS, arXiv:1806.09055, App. A.1.
    """

    def __init__(self, momentum=0.9, epsilon=1e-5, affine=False, **kwargs):
        super().__init__(**kwargs)
        self.momentum = momentum
        self.epsilon = epsilon
        self.affine = affine
        # False: training calls leave the moving statistics alone (PyTorch's
        # track_running_stats=False, but inference still reads them); for
        # networks that only ever normalise with batch statistics.
        self.track_running_stats = True

    def build(self, input_shape):
        c = input_shape[-1]
        if self.affine:
            self.gamma = add_param(self, "gamma", (c,), "ones")
            self.beta = add_param(self, "beta", (c,), "zeros")
        self.moving_mean = add_param(self, "moving_mean", (c,), "zeros", trainable=False)
        self.moving_variance = add_param(self, "moving_variance", (c,), "ones", trainable=False)

    def call(self, x, training=False, scale=None):
        """Normalises `x`; `scale` (a scalar, e.g. the op's mixing weight) multiplies
        the result at the cost of a per-channel product (affine-free BN only)."""
        if scale is not None and self.affine:
            raise ValueError("BatchNorm: scale= is for affine-free batch norms.")
        offset = None
        if self.affine:
            scale, offset = self.gamma.value, self.beta.value
        if training:  # gamma and beta folded into the normalisation
            y, mean, variance = normalize_batch(x, self.epsilon, scale, offset)
            self.update_moving(mean, variance)
            return y
        return tf.nn.batch_normalization(
            x, self.moving_mean.value, self.moving_variance.value, offset, scale, self.epsilon
        )

    def update_moving(self, mean, variance):
        """Moves the moving statistics towards a batch's `mean` and `variance`
        (nothing if the layer does not track running statistics)."""
        if not self.track_running_stats:
            return
        m = self.momentum
        assign_state(self.moving_mean, m * self.moving_mean.value + (1.0 - m) * mean)
        assign_state(self.moving_variance, m * self.moving_variance.value + (1.0 - m) * variance)


class Conv(keras.layers.Layer):
    """Plain 2-D convolution, no bias, 'SAME' padding.

    ``dilation > 1`` with ``stride > 1`` (unsupported by `tf.nn.conv2d`) is
    computed at stride 1 and subsampled, which equals the strided dilated
    convolution with symmetric padding.
    """

    def __init__(self, filters, kernel_size, stride=1, dilation=1, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = (
            tuple(kernel_size)
            if isinstance(kernel_size, (tuple, list))
            else (kernel_size, kernel_size)
        )
        self.stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride, stride)
        self.dilation = dilation

    def build(self, input_shape):
        shape = (*self.kernel_size, input_shape[-1], self.filters)
        self.kernel = add_param(self, "kernel", shape, _KERNEL_INIT, group="weights")

    def call(self, x):
        if self.dilation > 1:
            y = tf.nn.conv2d(x, self.kernel.value, 1, "SAME", dilations=self.dilation)
            return y[:, :: self.stride[0], :: self.stride[1], :]
        if self.kernel_size == (1, 1):
            return pointwise_conv(x, self.kernel.value, self.stride)
        return tf.nn.conv2d(x, self.kernel.value, [1, *self.stride, 1], "SAME")


class DepthwiseConv(keras.layers.Layer):
    """Depthwise 2-D convolution (multiplier 1), no bias, 'SAME' padding."""

    def __init__(self, kernel_size, stride=1, dilation=1, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation

    def build(self, input_shape):
        shape = (self.kernel_size, self.kernel_size, input_shape[-1], 1)
        self.kernel = add_param(self, "kernel", shape, _KERNEL_INIT, group="weights")

    def call(self, x, memo=None):
        s = self.stride
        if self.dilation > 1 and self.dilation == s == 2:
            # A stride-2 dilation-2 'SAME' convolution only reads the even-even
            # pixels (symmetric padding 2 = 1 on the subsampled grid): it is the
            # undilated convolution at stride 1 of the subsampled input, with a
            # quarter of the work and no strided-slice gradient.
            x = subsample_even(x, memo)
            return depthwise_conv(x, self.kernel.value, 1)
        if self.dilation > 1:
            # Atrous depthwise conv needs stride 1 in TF: compute, then subsample.
            y = dilated_depthwise_conv(x, self.kernel.value, self.dilation)
            return y if s == 1 else y[:, ::s, ::s, :]
        return depthwise_conv(x, self.kernel.value, s)


class Dense(keras.layers.Layer):
    """Linear layer with kernel and bias in group ``weights``."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = add_param(self, "kernel", (input_shape[-1], self.units), "glorot_uniform")
        self.bias = add_param(self, "bias", (self.units,), "zeros")

    def call(self, x):
        return tf.matmul(x, self.kernel.value) + self.bias.value


# ---------------------------------------------------------------------------
# Candidate operations.


class Op(keras.layers.Layer):
    """Base of the candidate operations: a chain of sub-layers.

    Sub-classes fill ``self.chain`` with layers or the strings ``"relu"``;
    `call` applies them in order, passing ``training`` to BN layers.

    Args:
      channels: input and output channels.
      stride: 1, or 2 on the reduction edges.
    """

    def __init__(self, channels, stride=1, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.stride = stride
        self.chain = []

    def build(self, input_shape):
        # Sub-layers build themselves on the network's eager build pass; without
        # this override Keras would build by symbolic tracing, nested per level.
        del input_shape

    def call(self, x, training=False, memo=None, scale=None):
        """Applies the chain; `memo` shares work between ops reading the same `x`.

        `scale` (optional scalar) multiplies the output; chains ending in a
        batch norm fold it into the normalisation (see `normalize_batch`).

        `memo` is a `Memo` owned by the caller for one input tensor (the
        search cell keeps one per node state): the leading ReLU and the subsampled
        inputs of strided ops are computed once for every op and edge reading
        that state.
        """
        last = len(self.chain) - 1
        for i, layer in enumerate(self.chain):
            if layer == "relu":
                x = relu(x, memo if i == 0 else None)
            elif isinstance(layer, BatchNorm):
                x = layer(x, training=training, scale=scale if i == last else None)
            elif isinstance(layer, DepthwiseConv) and i == 1:
                x = layer(x, memo=memo)
            else:
                x = layer(x)
        if scale is not None and not (self.chain and isinstance(self.chain[-1], BatchNorm)):
            x = scale * x
        return x


class Zero(Op):
    """``none``: the zero operation (DARTS lets it express "no edge")."""

    def call(self, x, training=False, memo=None, scale=None):
        del training, memo, scale
        return output_zeros(x, self.channels, self.stride)


class Identity(Op):
    """``skip_connect`` on a stride-1 edge."""

    def call(self, x, training=False, memo=None, scale=None):
        del training, memo
        return tf.identity(x) if scale is None else scale * x


class FactorizedReduce(Op):
    """ReLU, two offset stride-2 1x1 convs (half the channels each), concat, BN.

    Used for ``skip_connect`` on stride-2 edges and to preprocess the k-2 cell
    input after a reduction cell (DARTS).

    Args:
      channels: output channels (even).
      stride: must be 2.
    """

    def __init__(self, channels, stride=2, affine=False, **kwargs):
        super().__init__(channels, stride, **kwargs)
        if channels % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {channels}.")
        # 1x1 convolutions of the subsampled inputs (`_even_odd`): stride 2 overall.
        self.conv_1 = Conv(channels // 2, 1, name="conv_1")
        self.conv_2 = Conv(channels // 2, 1, name="conv_2")
        self.bn = BatchNorm(affine=affine, name="bn")

    def call(self, x, training=False, memo=None, scale=None):
        x = relu(x, memo)
        # conv_1 reads the even-even pixels, conv_2 the odd-odd ones (the input
        # shifted by one pixel, zero-padded at the bottom/right for odd sizes),
        # so both paths give ceil(H / 2) x ceil(W / 2).
        even, odd = _even_odd(x, memo)
        y = tf.concat([self.conv_1(even), self.conv_2(odd)], axis=-1)
        return self.bn(y, training=training, scale=scale)


class Memo:
    """Trace-time cache of the work shared by the ops reading one tensor.

    Not a dict: Keras rebuilds dict arguments of a layer call, which would
    lose what the layer adds to it.
    """

    def __init__(self):
        self._values = {}


def _memoized(memo, key, fn):
    """``memo``'s value for `key`, computed by `fn` on first use (no memo: ``fn()``)."""
    if memo is None:
        return fn()
    if key not in memo._values:
        memo._values[key] = fn()
    return memo._values[key]


def relu(x, memo=None):
    """``relu(x)``, shared through `memo` by the ops of every edge reading `x`."""
    return _memoized(memo, ("relu", x.ref()) if memo is not None else None,
                     lambda: tf.nn.relu(x))


def _even_odd(x, memo=None):
    """``(x[:, ::2, ::2], x[:, 1::2, 1::2])``, the second zero-padded to the first's size.

    One `space_to_depth` of `x` (zero-padded to even sizes) and a channel
    split: the gradient is a permutation, not the strided-slice scatter of
    ``x[:, ::2, ::2]``.
    """

    def compute():
        c = x.shape[-1]
        shape = tf.shape(x)
        pad = [[0, 0], [0, shape[1] % 2], [0, shape[2] % 2], [0, 0]]
        blocks = tf.nn.space_to_depth(tf.pad(x, pad), 2)
        even, _, odd = tf.split(blocks, [c, 2 * c, c], axis=-1)
        return even, odd

    key = ("even_odd", x.ref()) if memo is not None else None
    return _memoized(memo, key, compute)


def subsample_even(x, memo=None):
    """``x[:, ::2, ::2]`` (see `_even_odd`)."""
    return _even_odd(x, memo)[0]


MAX_POOL_GRADIENTS = ("native", "argmax")


def max_pool_argmax(x, ksize, strides, padding="SAME"):
    """`tf.nn.max_pool2d` (same arguments) with its gradient written as a scatter.

    The backward pass sums the output gradients into the positions of the
    window maxima (`tf.nn.max_pool_with_argmax`, `tf.math.unsorted_segment_sum`),
    whose own gradient is a gather: second-order gradients through it are
    exact in a `tf.function` as in eager execution. TensorFlow's `MaxPoolGrad`
    is not, for overlapping windows: inside a `tf.function` a nested tape's
    second-order gradient through a 3x3 stride-1 max-pool comes out wrong
    (the terms through ``MaxPoolGradGrad`` dropped) in some traces, eager
    execution and finite differences agree (docs/performance.md, "A TensorFlow
    bug"). Same values and first-order gradients as `tf.nn.max_pool2d`.
    """

    @tf.custom_gradient
    def pool(x):
        y, argmax = tf.nn.max_pool_with_argmax(x, ksize, strides, padding,
                                               include_batch_in_index=True)

        def grad(dy):
            dx = tf.math.unsorted_segment_sum(
                tf.reshape(dy, [-1]), tf.reshape(argmax, [-1]), tf.size(x, out_type=tf.int64))
            return tf.reshape(dx, tf.shape(x))

        return y, grad

    return pool(x)


class Pool(Op):
    """3x3 max/avg pooling ('SAME'; average excludes padding) followed by BN.

    ``max_pool_gradient``: "native" (TensorFlow's `MaxPoolGrad`, the fastest) or
    "argmax" (`max_pool_argmax`: exact second-order gradients in compiled
    graphs); set for a whole network by `darts.SearchNetwork`.
    """

    max_pool_gradient = "native"

    def __init__(self, channels, stride=1, kind="max", **kwargs):
        super().__init__(channels, stride, **kwargs)
        self.kind = kind
        self.bn = BatchNorm(name="bn")

    def call(self, x, training=False, memo=None, scale=None):
        if self.kind == "avg":
            pool = tf.nn.avg_pool2d
        else:
            pool = max_pool_argmax if self.max_pool_gradient == "argmax" else tf.nn.max_pool2d
        key = (self.kind, self.stride, self.max_pool_gradient)
        pooled = _memoized(memo, ("pool",) + key, lambda: pool(x, 3, self.stride, "SAME"))
        if not training:
            return self.bn(pooled, training=False, scale=scale)
        # With batch statistics the (affine-free) BN output is the same for every
        # edge pooling this input: normalise once, update each edge's statistics.
        y, mean, variance = _memoized(
            memo, ("pool_bn",) + key, lambda: normalize_batch(pooled, self.bn.epsilon)
        )
        self.bn.update_moving(mean, variance)
        return y if scale is None else scale * y


class ReLUConvBN(Op):
    """ReLU - conv (k x k) - BN; also the 1x1 preprocessing of cell inputs."""

    def __init__(self, channels, stride=1, kernel_size=3, out_channels=None, **kwargs):
        super().__init__(channels, stride, **kwargs)
        out_channels = out_channels or channels
        self.chain = [
            "relu",
            Conv(out_channels, kernel_size, stride=stride, name="conv"),
            BatchNorm(name="bn"),
        ]


class ConvNx1(Op):
    """``conv_1x5_5x1``: ReLU - conv 1xn - conv nx1 - BN (stride split as DARTS)."""

    def __init__(self, channels, stride=1, n=5, **kwargs):
        super().__init__(channels, stride, **kwargs)
        self.chain = [
            "relu",
            Conv(channels, (1, n), stride=(1, stride), name="conv_1xn"),
            Conv(channels, (n, 1), stride=(stride, 1), name="conv_nx1"),
            BatchNorm(name="bn"),
        ]


class DilConv(Op):
    """ReLU - depthwise conv (dilation) - pointwise conv - BN."""

    def __init__(self, channels, stride=1, kernel_size=3, dilation=2, **kwargs):
        super().__init__(channels, stride, **kwargs)
        self.chain = [
            "relu",
            DepthwiseConv(kernel_size, stride=stride, dilation=dilation, name="dw"),
            Conv(channels, 1, name="pw"),
            BatchNorm(name="bn"),
        ]


class SepConv(Op):
    """Two stacked DilConv with dilation 1; only the first one is strided."""

    def __init__(self, channels, stride=1, kernel_size=3, **kwargs):
        super().__init__(channels, stride, **kwargs)
        self.chain = [
            "relu",
            DepthwiseConv(kernel_size, stride=stride, name="dw_1"),
            Conv(channels, 1, name="pw_1"),
            BatchNorm(name="bn_1"),
            "relu",
            DepthwiseConv(kernel_size, name="dw_2"),
            Conv(channels, 1, name="pw_2"),
            BatchNorm(name="bn_2"),
        ]


def _skip(channels, stride, name):
    if stride == 1:
        return Identity(channels, stride, name=name)
    return FactorizedReduce(channels, stride, name=name)


OPERATIONS.register("none", lambda c, s, name: Zero(c, s, name=name))
OPERATIONS.register("max_pool_3x3", lambda c, s, name: Pool(c, s, kind="max", name=name))
OPERATIONS.register("avg_pool_3x3", lambda c, s, name: Pool(c, s, kind="avg", name=name))
OPERATIONS.register("skip_connect", _skip)
OPERATIONS.register("conv_3x3", lambda c, s, name: ReLUConvBN(c, s, 3, name=name))
OPERATIONS.register("conv_1x5_5x1", lambda c, s, name: ConvNx1(c, s, 5, name=name))
OPERATIONS.register("sep_conv_3x3", lambda c, s, name: SepConv(c, s, 3, name=name))
OPERATIONS.register("sep_conv_5x5", lambda c, s, name: SepConv(c, s, 5, name=name))
OPERATIONS.register("dil_conv_3x3", lambda c, s, name: DilConv(c, s, 3, 2, name=name))
OPERATIONS.register("dil_conv_5x5", lambda c, s, name: DilConv(c, s, 5, 2, name=name))


def make_op(name, channels, stride, layer_name=None):
    """Builds the operation `name` from `OPERATIONS`.

    Args:
      name: an operation name (see `OPERATIONS.names()`).
      channels: input = output channels.
      stride: 1 or 2.
      layer_name: Keras layer name (defaults to `name`).

    Returns:
      A Keras layer ``op(x, training=False)``.

    References: Elsken et al., METANAS, arXiv:1912.09744, Sec. 4.1.
    """
    if stride not in (1, 2):
        raise ValueError(f"Operation stride must be 1 or 2, got {stride}.")
    return OPERATIONS.get(name)(channels, stride, layer_name or name)
