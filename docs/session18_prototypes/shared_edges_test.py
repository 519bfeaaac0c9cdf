"""Session 18 prototype test, for share_per_state.patch (copy to tests/nas/ after
applying it): shared edge graphs give the plain network's outputs and gradients,
to second order, compiled and in the task learner's while loop, with cells
recomputed too; each configuration is traced once per input shape."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tests.nas.recompute_test import PRIMS, fast_params, loss_and_gradients
from tfmetanas import errors
from tfmetanas.meta import inner, metanas, rules
from tfmetanas.models.params import FunctionalModel
from tfmetanas.nas import darts


def tiny(share, seed=0, recompute_cells=0):
    keras.utils.set_random_seed(seed)
    net = darts.SearchNetwork(3, channels=4, num_cells=3, reduction_cells=(1,), num_nodes=2,
                              primitives=PRIMS, running_stats=False, share_edge_graphs=share,
                              recompute_cells=recompute_cells, max_pool_gradient="argmax")
    net(tf.zeros((2, 8, 8, 1)))
    return FunctionalModel(net)


@pytest.mark.parametrize("recompute_cells", [0, 2])
def test_shared_edge_graphs_give_the_same_outputs_and_gradients(recompute_cells):
    images = tf.random.stateless_uniform((4, 8, 8, 1), seed=[3, 4])
    results, inference = {}, {}
    for share in (False, True):
        fm = tiny(share, recompute_cells=recompute_cells if share else 0)
        params = fast_params(fm)
        results[share] = tf.function(loss_and_gradients, autograph=False)(fm, params, images)
        # Inference reads the BN moving statistics: each edge's own, not the first's.
        state = {p: v + 0.1 * i for i, (p, v) in enumerate(fm.state().items())}
        inference[share] = tf.function(
            lambda p, s, fm=fm: fm(p, s, images, training=False, hard_prune=True)[0],
            autograph=False)(params, state)
    (logits0, grads0, second0), (logits1, grads1, second1) = results[False], results[True]
    np.testing.assert_allclose(logits1.numpy(), logits0.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(inference[True].numpy(), inference[False].numpy(), rtol=1e-5,
                               atol=1e-6)
    for path, g in grads0.items():
        np.testing.assert_allclose(grads1[path].numpy(), g.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=path)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for p, g in second0.items() if "alpha" in p)
    for path, g in second0.items():
        np.testing.assert_allclose(second1[path].numpy(), g.numpy(), rtol=1e-3, atol=1e-5,
                                   err_msg=path)


def test_each_edge_configuration_is_traced_once():
    fm = tiny(True)
    net = fm.model
    images = tf.random.stateless_uniform((4, 8, 8, 1), seed=[3, 4])

    @tf.function(autograph=False)
    def run(params):
        with tf.GradientTape() as tape:
            tape.watch(list(params.values()))
            logits, _ = fm(params, {}, images, training=True, temperature=0.5)
        return tape.gradient(tf.reduce_sum(logits), params)

    run(fm.params())
    functions = net.cells[0].shared_calls._functions
    assert all(cell.shared_calls is net.cells[0].shared_calls for cell in net.cells)
    # 15 edges in 9 calls of 3 functions (two stride-1 edges, one stride-1 edge,
    # two stride-2 edges), 5 traces (8x8 and 4x4 for the stride-1 ones).
    assert len(functions) == 3
    assert sorted(f.experimental_get_tracing_count() for f in functions.values()) == [1, 2, 2]


def test_a_while_loop_task_learner_adapts_the_same():
    task = {k: v[0] for k, v in helpers.random_tasks(batch=1).items()}
    adapted = {}
    for share in (False, True):
        fm = tiny(share)
        learner = inner.TaskLearner(fm, {"weights": rules.Adam(0.01), "arch": rules.SGD(0.5)}, 3,
                                    forward_kwargs=metanas.TemperatureAnnealing(1.0, 0.1))
        adapted[share] = tf.function(
            lambda t, learner=learner: learner.adapt(t, use_while_loop=True).params)(task)
    for path, value in adapted[False].items():
        np.testing.assert_allclose(adapted[True][path].numpy(), value.numpy(), rtol=1e-4,
                                   atol=1e-6, err_msg=path)


def test_impossible_sharing_settings_are_refused():
    with pytest.raises(errors.ConfigError, match="share_edge_graphs"):
        darts.SearchNetwork(3, channels=4, num_cells=3, reduction_cells=(1,), num_nodes=2,
                            primitives=PRIMS, share_edge_graphs=True, running_stats=True)
