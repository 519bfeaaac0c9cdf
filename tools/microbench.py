r"""Micro-benchmarks behind the design choices of docs/performance.md.

  python tools/microbench.py [--cases=bn,subsample,conv,sepconv,pointwise] [--calls=20] [--threads=1]

Each case times alternative formulations of the same function (forward and
backward in one `tf.function`, on the shapes of the METANAS Omniglot search
network: 20 images of 28x28 with 28 channels), checks that they agree, and
prints milliseconds per call (median of `--rounds` rounds of `--calls` calls):

- ``bn``: 20 layers of affine-free batch norm + ReLU: the composed ops with
  autodiff, the hand-written gradient of `tfmetanas.models.layers.normalize_batch`,
  and TensorFlow's fused kernel (`FusedBatchNormV3`);
- ``subsample``: `FactorizedReduce`'s two 1x1 convolutions of the even and
  the shifted pixels: strided slices against one `space_to_depth` and a split;
- ``conv``: the 3x3 and 1x5 convolutions of three edges reading one state,
  one convolution each against one convolution with the three kernels
  concatenated (why merging edges was measured and what it would give);
- ``sepconv``: the 5x5 separable convolutions (depthwise, pointwise, twice)
  of three edges reading one state: one chain per edge against one chain on
  the state tiled three times, the pointwise convolutions grouped (three
  groups, oneDNN's grouped convolution): what merging whole edges would cost;
- ``pointwise``: chains of 10 1x1 convolutions, `tf.nn.conv2d` (oneDNN's
  convolution) against `tfmetanas.models.layers.pointwise_conv` (one
  `MatMul` over the pixels), on the METANAS search network's shapes (20 or 10
  images, 28-112 channels) and on supernet shapes (NB201 and MobileNet as
  the CPU configs size them, and MobileNet at the paper's 224 px); ms per layer.

``--threads`` sets TensorFlow's intra- and inter-op threads (0: its default;
the METANAS configs run one thread per op).
"""

import os
import statistics
import sys
import time

from absl import app, flags

if __name__ == "__main__":
    # This checkout's package, not whichever `tfmetanas` the environment would import.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

flags.DEFINE_list("cases", ["bn", "subsample", "conv"], "Cases to run.")
flags.DEFINE_integer("calls", 20, "Calls per round.")
flags.DEFINE_integer("rounds", 3, "Rounds (the median is reported).")
flags.DEFINE_integer("threads", 0, "Intra- and inter-op threads (0: TensorFlow's default).")
FLAGS = flags.FLAGS

SHAPE = (20, 28, 28, 28)


def time_ms(fn, *args):
    """Median over rounds of the mean ms per call of `fn(*args)` (after one call)."""
    import tensorflow as tf

    tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    rounds = []
    for _ in range(FLAGS.rounds):
        start = time.perf_counter()
        for _ in range(FLAGS.calls):
            out = fn(*args)
        tf.nest.map_structure(lambda t: t.numpy(), out)
        rounds.append((time.perf_counter() - start) * 1000.0 / FLAGS.calls)
    return statistics.median(rounds)


def _with_gradients(forward):
    """A `tf.function` returning ``[forward(*args), d sum(out^2) / d args]``."""
    import tensorflow as tf

    @tf.function
    def run(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            out = forward(*args)
            loss = tf.reduce_sum(tf.square(out))
        return [out] + tape.gradient(loss, list(args))

    return run


def _max_difference(a, b):
    """Largest |a - b| relative to the largest |b|, over the outputs and gradients."""
    import tensorflow as tf

    return max(float(tf.reduce_max(tf.abs(x - y)) / tf.reduce_max(tf.abs(y)))
               for x, y in zip(a, b))


def case_bn():
    import tensorflow as tf

    from tfmetanas.nas import ops

    eps, axes = 1e-5, [0, 1, 2]

    def composed(x):
        mean = tf.reduce_mean(x, axis=axes)
        variance = tf.reduce_mean(tf.square(x - mean), axis=axes)
        return tf.nn.batch_normalization(x, mean, variance, None, None, eps)

    def hand_written(x):
        return ops.normalize_batch(x, eps)[0]

    def fused(x):
        c = x.shape[-1]
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, tf.ones([c]), tf.zeros([c]), epsilon=eps, is_training=True)
        return y

    def layers(bn):
        def forward(x):
            for _ in range(20):
                x = tf.nn.relu(bn(x)) * 1.01
            return x
        return forward

    x = tf.random.stateless_normal(SHAPE, seed=[1, 2])
    runs = {name: _with_gradients(layers(fn)) for name, fn in
            [("composed + autodiff", composed), ("hand-written gradient", hand_written),
             ("FusedBatchNormV3", fused)]}
    base = runs["composed + autodiff"](x)
    for name, run in runs.items():
        print(f"  bn  {name:<24} {time_ms(run, x):8.2f} ms   "
              f"max relative difference {_max_difference(run(x), base):.1e}")


def case_subsample():
    import tensorflow as tf

    x = tf.random.stateless_normal(SHAPE, seed=[1, 2])
    k1 = tf.random.stateless_normal((1, 1, 28, 14), seed=[3, 4])
    k2 = tf.random.stateless_normal((1, 1, 28, 14), seed=[5, 6])

    def strided(x, k1, k2):
        x = tf.nn.relu(x)
        shifted = tf.pad(x[:, 1:, 1:, :], [[0, 0], [0, 1], [0, 1], [0, 0]])
        return tf.concat([tf.nn.conv2d(x[:, ::2, ::2, :], k1, 1, "SAME"),
                          tf.nn.conv2d(shifted[:, ::2, ::2, :], k2, 1, "SAME")], axis=-1)

    def space_to_depth(x, k1, k2):
        x = tf.nn.relu(x)
        c = x.shape[-1]
        even, _, odd = tf.split(tf.nn.space_to_depth(x, 2), [c, 2 * c, c], axis=-1)
        return tf.concat([tf.nn.conv2d(even, k1, 1, "SAME"),
                          tf.nn.conv2d(odd, k2, 1, "SAME")], axis=-1)

    base = _with_gradients(strided)
    for name, fn in [("strided slices", strided), ("space_to_depth + split", space_to_depth)]:
        run = _with_gradients(fn)
        print(f"  subsample  {name:<24} {time_ms(run, x, k1, k2):8.2f} ms   "
              f"max relative difference {_max_difference(run(x, k1, k2), base(x, k1, k2)):.1e}")


def case_conv():
    import tensorflow as tf

    for size, kernel in [(28, (3, 3)), (28, (1, 5)), (14, (3, 3))]:
        x = tf.random.stateless_normal((20, size, size, 28), seed=[1, 2])
        kernels = [tf.random.stateless_normal((*kernel, 28, 28), seed=[i, 7]) for i in range(3)]

        def separate(x, a, b, c):
            return tf.concat([tf.nn.conv2d(x, k, 1, "SAME") for k in (a, b, c)], axis=-1)

        def merged(x, a, b, c):
            return tf.nn.conv2d(x, tf.concat([a, b, c], axis=-1), 1, "SAME")

        base = _with_gradients(separate)(x, *kernels)
        for name, fn in [("3 convolutions", separate), ("1 merged convolution", merged)]:
            run = _with_gradients(fn)
            print(f"  conv {size}px {kernel}  {name:<22} {time_ms(run, x, *kernels):8.2f} ms   "
                  f"max relative difference {_max_difference(run(x, *kernels), base):.1e}")


def case_sepconv():
    import tensorflow as tf

    edges, c = 3, 28
    x = tf.random.stateless_normal(SHAPE, seed=[1, 2])
    dw = [tf.random.stateless_normal((5, 5, c, 1), seed=[i, 3]) for i in range(edges)]
    pw = [tf.random.stateless_normal((1, 1, c, c), seed=[i, 4]) * 0.2 for i in range(edges)]

    def chain(x, d, p):
        for _ in range(2):
            x = tf.nn.conv2d(tf.nn.depthwise_conv2d(x, d, [1, 1, 1, 1], "SAME"), p, 1, "SAME")
        return x

    def separate(x, *weights):
        return tf.concat([chain(x, d, p) for d, p in zip(weights[:edges], weights[edges:])],
                         axis=-1)

    def merged(x, *weights):
        # Edge-major channels; the [1, 1, c, 3c] kernel on 3c channels is a grouped conv.
        return chain(tf.tile(x, [1, 1, 1, edges]), tf.concat(weights[:edges], axis=2),
                     tf.concat(weights[edges:], axis=3))

    base = _with_gradients(separate)(x, *dw, *pw)
    for name, fn in [("3 chains", separate), ("1 chain, grouped 1x1", merged)]:
        run = _with_gradients(fn)
        print(f"  sepconv  {name:<24} {time_ms(run, x, *dw, *pw):8.2f} ms   "
              f"max relative difference {_max_difference(run(x, *dw, *pw), base):.1e}")


def _chain(conv):
    """``f(x, *kernels)``: `conv` applied with each kernel in turn."""
    def apply(x, *kernels):
        for k in kernels:
            x = conv(x, k)
        return x
    return apply


def case_pointwise():
    import tensorflow as tf

    from tfmetanas.models.layers import pointwise_conv

    layers = 10
    # (images, pixels, in, out channels): the search network's cells at 28, 14 and
    # 7 px, its meta-test batch of 10; the CPU-sized supernets (NB201's 1x1 op at
    # 8 and 32 channels; MobileNet at width 0.25: expansions and its head); and
    # MobileNet at the paper's size (224 px, width 1: an expansion, the head).
    for n, size, cin, cout in [(20, 28, 28, 28), (20, 14, 56, 56), (20, 7, 112, 112),
                               (10, 28, 28, 28), (64, 16, 8, 8), (64, 4, 32, 32),
                               (64, 16, 8, 48), (64, 4, 40, 240), (64, 1, 80, 320),
                               (32, 56, 24, 144), (32, 7, 320, 1280)]:
        x = tf.random.stateless_normal((n, size, size, cin), seed=[1, 2])
        # Alternating in -> out -> in channels, so that any chain length works.
        kernels = [tf.random.stateless_normal((1, 1, *((cin, cout) if i % 2 == 0 else
                                                        (cout, cin))), seed=[i, 5]) * 0.2
                   for i in range(layers)]

        conv2d = _chain(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
        base = _with_gradients(conv2d)(x, *kernels)
        for name, fn in [("tf.nn.conv2d", conv2d), ("pointwise_conv", _chain(pointwise_conv))]:
            run = _with_gradients(fn)
            ms = time_ms(run, x, *kernels) / layers
            print(f"  pointwise {n}x{size}x{size}, {cin}->{cout}  {name:<15} {ms:7.3f} ms per layer   "
                  f"max relative difference {_max_difference(run(x, *kernels), base):.1e}")


CASES = {"bn": case_bn, "subsample": case_subsample, "conv": case_conv,
         "sepconv": case_sepconv, "pointwise": case_pointwise}


def main(argv):
    del argv
    unknown = [c for c in FLAGS.cases if c not in CASES]
    if unknown:
        raise app.UsageError(f"Unknown --cases {unknown}; valid: {', '.join(CASES)}.")
    if FLAGS.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    for case in FLAGS.cases:
        print(f"{case}:")
        CASES[case]()


if __name__ == "__main__":
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
