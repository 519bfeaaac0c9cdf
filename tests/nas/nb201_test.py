"""NAS-Bench-201 encodings and supernet (nb201.py)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.models import params as params_lib
from tfmetanas.nas import nb201, oracle


def test_string_tuple_index_round_trip_all_cells():
    archs = nb201.all_archs()
    assert archs.shape == (15625, 6)
    for i, arch in enumerate(archs):
        a = tuple(int(v) for v in arch)
        assert nb201.arch_to_index(a) == i
        assert nb201.index_to_arch(i) == a
        assert nb201.string_to_arch(nb201.arch_to_string(a)) == a


def test_known_string():
    s = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    assert nb201.string_to_arch(s) == (3, 3, 4, 1, 3, 1)
    assert nb201.arch_to_string((3, 3, 4, 1, 3, 1)) == s


@pytest.mark.parametrize("bad", ["|foo~0|+|none~0|none~1|+|none~0|none~1|none~2|",
                                 "|none~0|+|none~0|", "|none~1|+|none~0|none~1|+|none~0|none~1|none~2|"])
def test_bad_strings(bad):
    with pytest.raises(errors.ConfigError):
        nb201.string_to_arch(bad)


@pytest.mark.skipif(not os.environ.get(oracle.DATA_ENV),
                    reason=f"{oracle.DATA_ENV} unset: the NAS-Bench-201 table is not available")
def test_benchmark_index_order_matches_table_for_all_rows():
    table = oracle.NB201Oracle()
    for index, string in enumerate(table.strings):
        arch = nb201.string_to_arch(string)
        assert nb201.arch_to_string(arch) == string
        assert table.index(arch) == index == table.index(string)
        assert table.arch(index) == arch
    # The benchmark order is a shuffle, not the canonical order.
    assert table.index(nb201.index_to_arch(0)) != 0


def _tiny(selection="switch"):
    return nb201.build_supernet(5, channels=4, cells_per_stage=1, image_size=8, selection=selection)


def test_subnet_forward_touches_only_its_ops():
    model = _tiny()
    fm = params_lib.FunctionalModel(model)
    params, state = fm.params(), fm.state()
    x = tf.random.normal([4, 8, 8, 3])
    arch = (3, 2, 0, 1, 3, 4)

    @tf.function
    def run(params, state, arch):
        with tf.GradientTape() as tape:
            tape.watch(params)
            logits, new_state = fm(params, state, x, training=True, arch=arch)
            loss = tf.reduce_sum(logits**2)
        return tape.gradient(loss, params, unconnected_gradients="zero"), new_state

    grads, new_state = run(params, state, tf.constant(arch, tf.int32))
    owners = model.candidate_variables()
    for path, g in grads.items():
        if path in owners:
            layer, choice = owners[path]
            if arch[layer] != choice:
                assert float(tf.reduce_max(tf.abs(g))) == 0.0, path
    for path, v in new_state.items():
        if path in owners and arch[owners[path][0]] != owners[path][1]:
            np.testing.assert_array_equal(v.numpy(), state[path].numpy())
    # The same graph serves another sub-model: no retrace.
    run(params, state, tf.constant((1, 1, 1, 1, 1, 1), tf.int32))
    assert run.experimental_get_tracing_count() == 1


def test_static_and_tensor_arch_agree():
    model = _tiny()
    x = tf.random.normal([2, 8, 8, 3])
    arch = (3, 2, 4, 1, 0, 3)
    a = model(x, arch=tf.constant(arch))
    b = model(x, arch=arch)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)


def test_missing_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="arch="):
        _tiny()(tf.zeros([1, 8, 8, 3]))
