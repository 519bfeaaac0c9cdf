"""`Choice(selection="gather")`: one block run on the chosen candidate's gathered
weights computes what the chosen candidate computes (supernet.py)."""

import numpy as np
import pytest
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.models import params as params_lib
from tfmetanas.nas import mobilenet, nb201
from tfmetanas.nas import supernet as sn


def _relative_error(a, b):
    return float(tf.reduce_max(tf.abs(a - b)) / (tf.reduce_max(tf.abs(b)) + 1e-30))


@pytest.mark.parametrize("stride", [1, 2])
def test_one_gathered_block_is_each_candidate(stride):
    # Two choices over the same six MBConv candidates (kernel 3/5/7, expansion 3/6).
    tf.keras.utils.set_random_seed(1)
    candidates = [mobilenet.mbconv(8, 8 if stride == 1 else 12, k, e, stride, 0.25,
                                   {"momentum": 0.9}) for k, e in mobilenet.CHOICES]
    switch, gather = sn.Choice(candidates, "switch"), sn.Choice(candidates, "gather")
    x = tf.random.normal([6, 7, 7, 8])  # Odd size: 'SAME' padding of a strided kernel.
    weights = [v for c in candidates for v in c.trainable_variables]
    state = [v for c in candidates for v in c.non_trainable_variables]
    for i, v in enumerate(state):  # Statistics away from their initial values.
        v.assign(tf.random.stateless_uniform(v.shape, [2, i], 0.5, 1.5))

    def run(layer, choice, training):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y, updates = layer.forward_choice(x, choice, training)
            loss = tf.reduce_sum(y * tf.sin(tf.reshape(
                tf.range(tf.size(y), dtype=tf.float32), tf.shape(y))))
        grads = tape.gradient(loss, [x, *weights], unconnected_gradients="zero")
        return y, grads, {id(v): value for v, value in updates}

    for training in (True, False):
        fns = [tf.function(lambda c, layer=layer, training=training: run(layer, c, training),
                           autograph=False)
               for layer in (switch, gather)]
        for choice in range(len(candidates)):
            (y_s, grads_s, updates_s), (y_g, grads_g, updates_g) = [
                fn(tf.constant(choice)) for fn in fns]
            assert _relative_error(y_g, y_s) < 1e-5
            for g, s, v in zip(grads_g[1:], grads_s[1:], weights):
                if not any(v is w for w in candidates[choice].trainable_variables):
                    assert not np.any(g.numpy()), v.path  # Others: exactly zero.
                assert _relative_error(g, s) < 1e-5, v.path
            assert _relative_error(grads_g[0], grads_s[0]) < 1e-5
            assert updates_g.keys() == updates_s.keys() == (
                {id(v) for v in state} if training else set())
            for v in state if training else ():
                if not any(v is w for w in candidates[choice].non_trainable_variables):
                    np.testing.assert_array_equal(updates_g[id(v)].numpy(), v.numpy())
                assert _relative_error(updates_g[id(v)], updates_s[id(v)]) < 1e-6
        assert fns[1].experimental_get_tracing_count() == 1


def test_mobilenet_gathered_training_call_is_the_sub_models():
    # The whole supernet with a tensor architecture against the same supernet
    # with a Python one, which builds only the chosen candidates.
    tf.keras.utils.set_random_seed(7)
    model = mobilenet.build_supernet(5, width_multiplier=0.25, image_size=16, in_channels=1,
                                     selection="gather")
    fm = params_lib.FunctionalModel(model)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(8, 16, 16, 1)), tf.float32)
    labels = tf.constant(rng.integers(0, 5, 8), tf.int32)
    owners = model.candidate_variables()

    def call(arch):
        logits, state = fm({}, None, images, training=True, arch=arch)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
        return loss, state

    gathered = tf.function(call, autograph=False)
    for arch in [(5,) * 19, tuple(int(a) for a in rng.integers(0, 6, 19))]:
        loss_g, state_g = gathered(tf.constant(arch, tf.int32))
        loss_s, state_s = tf.function(lambda arch=arch: call(arch), autograph=False)()
        np.testing.assert_allclose(loss_g.numpy(), loss_s.numpy(), rtol=1e-5)
        for p, value in state_g.items():
            if p in owners and arch[owners[p][0]] != owners[p][1]:
                np.testing.assert_array_equal(value.numpy(), state_s[p].numpy())
            assert _relative_error(value, state_s[p]) < 1e-4, p
    assert gathered.experimental_get_tracing_count() == 1


def test_candidates_of_different_structures_are_refused():
    with pytest.raises(errors.ConfigError, match="differ only in their sizes"):
        nb201.build_supernet(3, channels=4, cells_per_stage=1, image_size=8, selection="gather")
    with pytest.raises(errors.ConfigError, match="Unknown selection"):
        sn.Choice([], selection="gathered")
