"""SPOS / FairNAS / SUMNAS training steps (meta/sumnas.py) on a toy supernet."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.meta import sumnas
from tfmetanas.nas import supernet as sn


class ToySupernet(sn.Supernet):
    """3 choice layers x 3 candidates (conv1x1 / conv3x3 / conv-BN), global pool, dense."""

    num_layers, num_choices = 3, 3

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stem = sn.Conv(1, 4, 3)
        self.choices = [
            sn.Choice([sn.Conv(4, 4, 1), sn.Conv(4, 4, 3),
                       sn.Sequential([sn.Conv(4, 4, 3), sn.BatchNorm(4), tf.nn.relu])])
            for _ in range(3)
        ]
        self.head = sn.Dense(4, 3)
        self.built = True

    def forward(self, x, arch, training=False):
        x, updates = self.stem.forward(x)
        for i, choice in enumerate(self.choices):
            y, u = choice.forward_choice(x, arch[i], training)
            x, updates = x + tf.nn.relu(y), updates + u
        logits, _ = self.head.forward(tf.reduce_mean(x, axis=[1, 2]))
        return logits, updates


def _toy():
    keras.utils.set_random_seed(0)
    return ToySupernet()


X = tf.random.stateless_normal([8, 6, 6, 1], [1, 2])
Y = tf.constant([0, 1, 2, 0, 1, 2, 0, 1], tf.int32)


def test_fair_sampling_covers_every_candidate_once():
    for step in range(5):
        archs = sn.sample_fair(0, step, 7, 5).numpy()
        assert archs.shape == (5, 7)
        for layer in range(7):
            assert sorted(archs[:, layer]) == list(range(5))
    a, b = sn.sample_fair(0, 0, 7, 5).numpy(), sn.sample_fair(0, 1, 7, 5).numpy()
    assert not np.array_equal(a, b)  # resampled every step
    np.testing.assert_array_equal(a, sn.sample_fair(0, 0, 7, 5).numpy())  # deterministic


def test_fairnas_trains_every_candidate_once_per_step():
    model = _toy()
    trainer = sumnas.SupernetTrainer(model, "fairnas", learning_rate=0.1, total_steps=5,
                                     fair_reduction="sum", cosine=False)
    archs = trainer.sample(0).numpy()
    # Expected update: sum over the m sub-models of their gradients.
    fm = trainer.fm
    params, state = fm.params("weights"), fm.state()
    expected = {p: tf.zeros_like(v) for p, v in params.items()}
    touches = {p: 0 for p in params}
    owners = model.candidate_variables()
    for arch in archs:
        _, _, grads, state = trainer._grads(params, state, X, Y, tf.constant(arch))
        expected = {p: expected[p] + grads[p] for p in params}
        for p in params:
            if p in owners and arch[owners[p][0]] == owners[p][1]:
                touches[p] += 1
    assert all(touches[p] == 1 for p in owners if p in touches)
    trainer.train_step(X, Y)
    for p, v in fm.params("weights").items():
        np.testing.assert_allclose(v.numpy(), (params[p] - 0.1 * expected[p]).numpy(), atol=1e-6)


def test_spos_updates_only_the_sampled_path():
    model = _toy()
    trainer = sumnas.SupernetTrainer(model, "spos", learning_rate=0.1, momentum=0.9,
                                     weight_decay=1e-2, total_steps=5)
    arch = trainer.sample(0).numpy()[0]
    before = trainer.fm.params("weights")
    trainer.train_step(X, Y)
    after = trainer.fm.params("weights")
    for p, (layer, choice) in model.candidate_variables().items():
        if p in before:
            changed = not np.array_equal(before[p].numpy(), after[p].numpy())
            assert changed == (arch[layer] == choice), p


def test_spos_momentum_and_weight_decay_written_out():
    # Two steps of the packed outer update against heavy-ball SGD with weight
    # decay per tensor, candidates off the sampled path left alone (momentum too).
    model = _toy()
    lr, mom, wd = 0.1, 0.9, 1e-2
    trainer = sumnas.SupernetTrainer(model, "spos", learning_rate=lr, momentum=mom,
                                     weight_decay=wd, total_steps=5)
    fm = trainer.fm
    buf = {p: np.zeros(v.shape, np.float32) for p, v in fm.params("weights").items()}
    for step in range(2):
        arch = trainer.sample(step)[0]
        theta = fm.params("weights")
        _, _, grads, _ = trainer._grads(theta, fm.state(), X, Y, arch)
        owners = model.candidate_variables()
        rate = float(trainer.learning_rate(step))
        expected = {}
        for p, v in theta.items():
            expected[p] = v.numpy()
            if p not in owners or int(arch[owners[p][0]]) == owners[p][1]:
                buf[p] = mom * buf[p] + grads[p].numpy() + wd * v.numpy()
                expected[p] = v.numpy() - rate * buf[p]
        trainer.train_step(X, Y)
        for p, v in fm.params("weights").items():
            np.testing.assert_allclose(v.numpy(), expected[p], rtol=1e-5, atol=1e-6, err_msg=p)
    for p, b in trainer.momentum_buffers.items():
        np.testing.assert_allclose(b.numpy(), buf[p], rtol=1e-5, atol=1e-6, err_msg=p)


@pytest.mark.parametrize("strategy", ["spos", "fairnas", "sumnas"])
def test_loops_carry_packed_vectors_not_one_variable_per_tensor(strategy):
    model = _toy()
    trainer = sumnas.SupernetTrainer(model, strategy, learning_rate=0.1, momentum=0.9,
                                     inner_steps=2, total_steps=5)
    graph = trainer._train_step.fn.get_concrete_function(
        tf.constant(X, tf.float32), tf.constant(Y, tf.int32)).graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    loops = [n for n in nodes if n.op in ("While", "StatelessWhile")]
    assert len(loops) == (2 if strategy == "sumnas" else 1)
    tensors = len(trainer.fm.params("weights")) + len(trainer.fm.state())
    assert tensors > 20
    for loop in loops:  # counter, packed weights/directions, state, metrics, a few captures
        assert len([i for i in loop.input if not i.startswith("^")]) <= 12, loop.name


def test_segment_ids_of_a_packed_vector():
    np.testing.assert_array_equal(sumnas._segment_ids([2, 0, 3, 1, 0]), [0, 0, 2, 2, 2, 3])
    np.testing.assert_array_equal(sumnas._segment_ids([3]), [0, 0, 0])


def test_sumnas_k1_equals_fairnas():
    alpha, beta, wd = 0.05, 1.0, 4e-5
    m1, m2 = _toy(), _toy()
    fair = sumnas.SupernetTrainer(m1, "fairnas", learning_rate=alpha * beta, momentum=0.9,
                                  weight_decay=wd / alpha, total_steps=10)
    sum1 = sumnas.SupernetTrainer(m2, "sumnas", learning_rate=beta, momentum=0.9, weight_decay=wd,
                                  inner_steps=1, inner_learning_rate=alpha, total_steps=10)
    for _ in range(2):
        fair.train_step(X, Y)
        sum1.train_step(X, Y)
    for a, b in zip(m1.variables, m2.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_sumnas_reptile_aggregation_formula():
    model = _toy()
    alpha, beta, k = 0.05, 0.7, 3
    trainer = sumnas.SupernetTrainer(model, "sumnas", learning_rate=beta, inner_steps=k,
                                     inner_learning_rate=alpha, inner_momentum=0.9,
                                     cosine=False, total_steps=10)
    fm = trainer.fm
    theta, state = fm.params("weights"), fm.state()
    adapted = []
    for arch in trainer.sample(0).numpy():
        fast, buf = dict(theta), {p: tf.zeros_like(v) for p, v in theta.items()}
        for _ in range(k):  # plain heavy-ball SGD written out
            _, _, g, state = trainer._grads(fast, state, X, Y, tf.constant(arch))
            buf = {p: 0.9 * buf[p] + g[p] for p in theta}
            fast = {p: fast[p] - alpha * buf[p] for p in theta}
        adapted.append(fast)
    metrics = trainer.train_step(X, Y)
    assert np.isfinite(float(metrics["loss"]))
    for p, v in fm.params("weights").items():
        mean = sum(a[p] for a in adapted) / len(adapted)
        expected = theta[p] - beta * (theta[p] - mean)
        np.testing.assert_allclose(v.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    assert trainer._train_step.experimental_get_tracing_count() == 1


def test_bad_strategy():
    with pytest.raises(errors.ConfigError, match="valid"):
        sumnas.SupernetTrainer(_toy(), "darts", learning_rate=1.0, total_steps=1)


def test_fixed_arch_train_step_is_plain_sgd_on_the_chosen_path():
    from tfmetanas.meta import rules
    from tfmetanas.models import params as params_lib

    model = _toy()
    fm = params_lib.FunctionalModel(model)
    rule = rules.SGD(0.1)
    step = sn.fixed_arch_train_step(fm, rule)
    arch = tf.constant([1, 2, 0], tf.int32)
    before = fm.params("weights")
    with tf.GradientTape() as tape:
        tape.watch(before)
        logits, _ = fm(before, None, X, training=True, arch=arch)
        expected_loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            Y, logits, from_logits=True))
    grads = tape.gradient(expected_loss, before, unconnected_gradients="zero")
    loss, _ = step(tf.constant(0), X, Y, arch, rule.init(before))
    np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-5)
    after = fm.params("weights")
    for p in before:
        np.testing.assert_allclose(after[p].numpy(), (before[p] - 0.1 * grads[p]).numpy(), atol=1e-6)
    for p, (layer, choice) in model.candidate_variables().items():
        if p in before:
            changed = not np.array_equal(before[p].numpy(), after[p].numpy())
            assert changed == (arch.numpy()[layer] == choice), p
