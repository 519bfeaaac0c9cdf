"""MobileNet (FairNAS layout) supernet (mobilenet.py)."""

import numpy as np
import tensorflow as tf

from tfmetanas.nas import mobilenet


def test_layout():
    specs = mobilenet.layer_specs(1.0)
    assert len(specs) == 19 == mobilenet.NUM_LAYERS
    assert [s for _, _, s in specs].count(2) == 4
    assert specs[0] == (16, 24, 2) and specs[-1] == (192, 320, 1)
    assert len(mobilenet.CHOICES) == 6


def test_supernet_one_graph_for_all_subnets():
    model = mobilenet.build_supernet(5, width_multiplier=0.25, image_size=16, in_channels=1)
    x = tf.random.normal([2, 16, 16, 1])
    fn = tf.function(lambda a: model(x, training=True, arch=a))
    out_a = fn(tf.zeros([19], tf.int32))
    out_b = fn(tf.fill([19], 5))
    assert out_a.shape == (2, 5)
    assert not np.allclose(out_a.numpy(), out_b.numpy())
    assert fn.experimental_get_tracing_count() == 1
    arch = tuple(np.random.default_rng(1).integers(0, 6, 19))
    # Compared in inference mode: training-mode BN over a batch of 2 at the
    # 1x1 resolution of the last stages amplifies float round-off (graph vs
    # eager kernels) without bound, so that comparison is ill-conditioned.
    infer = tf.function(lambda a: model(x, training=False, arch=a))
    np.testing.assert_allclose(infer(tf.constant(arch, tf.int32)).numpy(),
                               model(x, training=False, arch=arch).numpy(), atol=1e-4)
    assert infer.experimental_get_tracing_count() == 1
