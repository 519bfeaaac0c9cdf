"""Analytic MACs/params (flops.py) against independent counts of built sub-models.

Params: the sizes of the variables that receive a gradient in a standalone
sub-model (static arch: only the chosen ops are in the graph). MACs: a
recomputation from the traced graph's Conv2D / depthwise / MatMul ops and
their actual shapes.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfmetanas.nas import flops, mobilenet, nb201


def _independent(model, arch, size, channels):
    arch = tuple(int(a) for a in arch)
    x = tf.zeros([1, size, size, channels])
    with tf.GradientTape() as tape:
        y = model(x, training=True, arch=tuple(arch))
        loss = tf.reduce_sum(y)
    grads = tape.gradient(loss, model.trainable_variables)
    params = sum(int(np.prod(v.shape)) for v, g in zip(model.trainable_variables, grads)
                 if g is not None)
    graph = tf.function(lambda t: model(t, arch=tuple(arch))).get_concrete_function(
        tf.TensorSpec([1, size, size, channels])).graph
    macs = 0
    for op in graph.get_operations():
        if op.type == "Conv2D":
            k = op.inputs[1].shape
            out = op.outputs[0].shape
            macs += out[1] * out[2] * k[0] * k[1] * k[2] * k[3]
        elif op.type == "DepthwiseConv2dNative":
            k = op.inputs[1].shape
            out = op.outputs[0].shape
            macs += out[1] * out[2] * k[0] * k[1] * k[2] * k[3]
        elif op.type == "MatMul":  # Dense layers, and 1x1 convolutions over the pixels.
            a = op.inputs[0].shape
            inner = a[0] if op.get_attr("transpose_a") else a[1]
            out = op.outputs[0].shape
            macs += out[0] * out[1] * inner
    return macs, params


def test_nb201_published_numbers():
    assert flops.nb201_cost((3,) * 6).macs == 220_119_680
    assert flops.nb201_cost((0,) * 6).macs == 7_783_040


@pytest.mark.parametrize("arch", [(3, 3, 3, 3, 3, 3), (0, 1, 4, 0, 1, 4), (2, 3, 0, 4, 1, 2)])
def test_nb201_matches_independent_count(arch):
    model = nb201.build_supernet(7, channels=4, cells_per_stage=2, image_size=12)
    cost = flops.cost_of(model, arch, 12)
    assert (cost.macs, cost.params) == _independent(model, arch, 12, 3)


def test_mobilenet_matches_independent_count():
    model = mobilenet.build_supernet(11, width_multiplier=0.25, image_size=32, in_channels=1)
    rng = np.random.default_rng(0)
    for arch in [(0,) * 19, (5,) * 19, tuple(rng.integers(0, 6, 19))]:
        cost = flops.cost_of(model, arch, 32)
        assert (cost.macs, cost.params) == _independent(model, arch, 32, 1), arch


def test_mobilenet_full_size_range():
    small = flops.mobilenet_cost((0,) * 19).macs
    large = flops.mobilenet_cost((5,) * 19).macs
    # FairNAS-space MACs at 224x224 lie in the few-hundred-million range.
    assert 150e6 < small < large < 1500e6
