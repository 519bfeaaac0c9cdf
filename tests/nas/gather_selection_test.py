"""`Choice(selection="gather")`: one block run on the chosen candidate's gathered
weights computes what the chosen candidate computes (supernet.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.meta import sumnas
from tfmetanas.models import params as params_lib
from tfmetanas.nas import mobilenet, nb201
from tfmetanas.nas import supernet as sn

BN = {"momentum": 0.9}


def _relative_error(a, b):
    return float(tf.reduce_max(tf.abs(a - b)) / (tf.reduce_max(tf.abs(b)) + 1e-30))


@pytest.mark.parametrize("stride", [1, 2])
def test_one_gathered_block_is_each_candidate_on_fast_weights(stride):
    # Two choices over the same six MBConv candidates (kernel 3/5/7, expansion 3/6),
    # run as a stateless call runs them: on fast weights and BN statistics that are
    # tensors, not the variables' values.
    tf.keras.utils.set_random_seed(1)
    candidates = [mobilenet.mbconv(8, 8 if stride == 1 else 12, k, e, stride, 0.25, BN)
                  for k, e in mobilenet.CHOICES]
    switch, gather = sn.Choice(candidates, "switch"), sn.Choice(candidates, "gather")
    x = tf.random.normal([6, 7, 7, 8])  # Odd size: 'SAME' padding of a strided kernel.
    weights = [v for c in candidates for v in c.trainable_variables]
    state = [v for c in candidates for v in c.non_trainable_variables]
    fast_weights = [v.value * 1.5 + 0.01 for v in weights]
    fast_state = [tf.random.stateless_uniform(v.shape, [2, i], 0.5, 1.5)
                  for i, v in enumerate(state)]

    def run(layer, choice, training):
        with tf.GradientTape() as tape:
            tape.watch([x, *fast_weights])
            mapping = list(zip(weights + state, fast_weights + fast_state))
            with keras.StatelessScope(state_mapping=mapping):
                y, updates = layer.forward_choice(x, choice, training)
            loss = tf.reduce_sum(y * tf.sin(tf.reshape(
                tf.range(tf.size(y), dtype=tf.float32), tf.shape(y))))
        grads = tape.gradient(loss, [x, *fast_weights], unconnected_gradients="zero")
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
            for v, given in zip(state, fast_state) if training else ():
                if not any(v is w for w in candidates[choice].non_trainable_variables):
                    np.testing.assert_array_equal(updates_g[id(v)].numpy(), given.numpy())
                assert _relative_error(updates_g[id(v)], updates_s[id(v)]) < 1e-6
        assert fns[1].experimental_get_tracing_count() == 1


class _Tiny(sn.Supernet):
    """A stem, two MBConv choice layers (stride 2, then a residual one) and a classifier."""

    num_layers, num_choices = 2, len(mobilenet.CHOICES)

    def __init__(self, selection):
        super().__init__()
        self.stem = sn.Conv(1, 8, 3)
        self.choices = [sn.Choice([mobilenet.mbconv(8, 8, k, e, stride, 0.25, BN)
                                   for k, e in mobilenet.CHOICES], selection)
                        for stride in (2, 1)]
        self.classifier = sn.Dense(8, 3)
        self.built = True

    def forward(self, x, arch, training=False):
        x, updates = self.stem.forward(x, training)
        for i, choice in enumerate(self.choices):
            y, u = choice.forward_choice(x, arch[i], training)
            updates += u
            x = y if i == 0 else x + y
        logits, _ = self.classifier.forward(tf.reduce_mean(x, axis=[1, 2]))
        return logits, updates


@pytest.mark.parametrize("strategy", ["sumnas", "fairnas"])
def test_supernet_trainer_steps_are_the_same_with_gathered_choices(strategy):
    # The trainer's loops (inner SGD steps on fast weights, sub-models one after
    # another, packed weights and statistics): two steps, gather against switch.
    rng = np.random.default_rng(0)
    images = rng.normal(size=(12, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 12).astype(np.int32)
    results = {}
    for selection in ("switch", "gather"):
        tf.keras.utils.set_random_seed(3)
        model = _Tiny(selection)
        model(tf.zeros([1, 8, 8, 1]), arch=tf.zeros([2], tf.int32))
        trainer = sumnas.SupernetTrainer(
            model, strategy, learning_rate=0.5, total_steps=10, momentum=0.9,
            weight_decay=1e-3, inner_steps=3, inner_learning_rate=0.05)
        metrics = [trainer.train_step(images, labels) for _ in range(2)]
        results[selection] = ([float(m["loss"]) for m in metrics],
                              [v.numpy() for v in model.variables])
    np.testing.assert_allclose(results["gather"][0], results["switch"][0], rtol=1e-5)
    for g, s in zip(results["gather"][1], results["switch"][1]):
        np.testing.assert_allclose(g, s, rtol=1e-4, atol=1e-5)
    assert any(not np.array_equal(a, b) for a, b in zip(
        results["gather"][1], [v.numpy() for v in _Tiny("switch").variables]))


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


class _Untold(sn.Module):
    """A module that does not state what its forward pass branches on."""

    def __init__(self, squared, **kwargs):
        super().__init__(**kwargs)
        self.squared = squared
        self.built = True

    def forward(self, x, training=False):
        return (x * x if self.squared else x), []


class _Assigning(sn.Module):
    """A module whose forward pass assigns its variable (instead of returning the update)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False, name="count")

    def gather_settings(self):
        return ()

    def forward(self, x, training=False):
        self.count.assign(self.count + 1.0)
        return x, []


def test_a_forward_pass_that_assigns_a_variable_is_refused():
    # A gathered choice runs the template candidate in a stateless scope: the
    # assignment would be lost, so the call is refused (params.assigned_since).
    choice = sn.Choice([_Assigning(), _Assigning()], "gather")
    with pytest.raises(errors.ConfigError, match="assigned a variable"):
        choice.forward_choice(tf.ones([1, 2, 2, 1]), tf.constant(1), True)


_OTHER = {
    "stride": lambda: mobilenet.mbconv(8, 8, 3, 3, 2, 0.25, BN),
    "squeeze-excite": lambda: mobilenet.mbconv(8, 8, 3, 3, 1, 0.0, BN),
    "1x1 against kxk": lambda: sn.Sequential([sn.Conv(8, 8, 3)]),
    "batch-norm momentum": lambda: sn.Sequential([sn.Conv(8, 8, 1), sn.BatchNorm(8, momentum=0.5)]),
    "activation": lambda: sn.Sequential([sn.Conv(8, 8, 1), sn.BatchNorm(8), tf.nn.relu]),
}
_BASE = {
    "stride": lambda: mobilenet.mbconv(8, 8, 5, 6, 1, 0.25, BN),
    "squeeze-excite": lambda: mobilenet.mbconv(8, 8, 5, 6, 1, 0.25, BN),
    "1x1 against kxk": lambda: sn.Sequential([sn.Conv(8, 8, 1)]),
    "batch-norm momentum": lambda: sn.Sequential([sn.Conv(8, 8, 1), sn.BatchNorm(8)]),
    "activation": lambda: sn.Sequential([sn.Conv(8, 8, 1), sn.BatchNorm(8), tf.nn.silu]),
}


@pytest.mark.parametrize("difference", sorted(_OTHER))
def test_candidates_that_differ_in_more_than_sizes_are_refused(difference):
    with pytest.raises(errors.ConfigError, match="differ only in their sizes"):
        sn.Choice([_BASE[difference](), _OTHER[difference]()], "gather")
    sn.Choice([_BASE[difference](), _BASE[difference]()], "gather")  # The same: accepted.


def test_other_refusals():
    with pytest.raises(errors.ConfigError, match="differ only in their sizes"):
        nb201.build_supernet(3, channels=4, cells_per_stage=1, image_size=8, selection="gather")
    with pytest.raises(errors.ConfigError, match="gather_settings"):
        sn.Choice([_Untold(True), _Untold(False)], "gather")
    with pytest.raises(errors.ConfigError, match="needs candidates"):
        sn.Choice([], "gather")
    with pytest.raises(errors.ConfigError, match="Unknown selection"):
        sn.Choice([], selection="gathered")
