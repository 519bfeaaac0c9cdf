"""Tests of the METANAS search network, pruning and discrete networks.

Tiny networks (2 cells, 2 nodes, 3 ops, 4 channels, 8x8 images) keep the suite
fast on 2 CPU cores.
"""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.models.params import FunctionalModel
from tfmetanas.nas import darts, genotype, plotting

PRIMS = ("max_pool_3x3", "skip_connect", "conv_3x3")
SHAPE = (4, 8, 8, 1)


def make_net(**kwargs):
    args = dict(
        num_classes=3,
        channels=4,
        num_cells=2,
        reduction_cells=(1,),
        num_nodes=2,
        primitives=PRIMS,
        prune_threshold=0.01,
    )
    args.update(kwargs)
    net = darts.SearchNetwork(**args)
    net(tf.zeros(SHAPE))
    return net


@pytest.fixture(scope="module")
def net():
    return make_net()


@pytest.fixture(scope="module")
def images():
    return tf.random.stateless_normal(SHAPE, seed=[1, 2])


def sparse_arch(net, seed, keep=(1.0, -1.0)):
    """Arch logits whose pruned weights underflow to exactly 0 at T = 0.01.

    Every row gets logits in {1, -1} with at least one 1: kept entries share
    the weight, the others get exp(-200) == 0 in float32.
    """
    rng = np.random.default_rng(seed)

    def logits(shape):
        x = np.where(rng.random(shape) < 0.5, keep[0], keep[1]).astype(np.float32)
        rows = x.reshape(-1, shape[-1])
        rows[np.arange(len(rows)), rng.integers(shape[-1], size=len(rows))] = keep[0]
        return rows.reshape(shape)

    values = {}
    for v in [net.alpha_normal, net.alpha_reduce, *net.beta_normal, *net.beta_reduce]:
        values[v.path] = tf.constant(logits(tuple(v.shape)))
    return values


# -- mixing weights -------------------------------------------------------------


def test_mixed_op_weights_sum_to_one_and_tend_to_one_hot():
    alpha = tf.random.stateless_normal((5, 7), seed=[3, 4])
    for tau in (1.0, 0.3, 0.05):
        w = darts.mixing_weights(alpha, tau)
        tf.debugging.assert_near(tf.reduce_sum(w, -1), tf.ones(5))
    w = darts.mixing_weights(alpha, 1e-3)
    tf.debugging.assert_near(tf.reduce_max(w, -1), tf.ones(5), atol=1e-4)
    e_hot = float(darts.arch_entropy(alpha, 1e-3))
    e_uniform = float(darts.arch_entropy(tf.zeros((5, 7)), 1.0))
    assert e_hot < 1e-2 and abs(e_uniform - math.log(7)) < 1e-5


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_subsets_cover_all_k_subsets(k):
    for j in range(4):
        subsets = genotype.input_subsets(j + 2, k)
        assert len(subsets) == math.comb(j + 2, min(k, j + 2))
        assert len(set(subsets)) == len(subsets)


def test_arch_params_shapes_and_group():
    net = make_net(num_nodes=3, k=2)
    fm = FunctionalModel(net)
    arch = fm.paths_of("arch")
    assert len(arch) == 2 + 2 * 3
    assert tuple(net.alpha_normal.shape) == (2 + 3 + 4, len(PRIMS))
    assert [b.shape[0] for b in net.beta_normal] == [1, 3, 6]
    assert float(tf.math.reduce_std(net.alpha_normal.value)) < 1e-2  # 1e-3 * N(0, 1)
    with pytest.raises(errors.ConfigError, match="ops_and_inputs"):
        darts.SearchNetwork(3, sparsify="bogus")


# -- compiled vs eager, gradients ------------------------------------------------


def test_tf_function_matches_eager(net, images):
    fm = FunctionalModel(net)
    params = {**fm.params(), **sparse_arch(net, 0)}
    compiled = tf.function(lambda p, s, x, t: fm(p, s, x, training=True, temperature=t))
    for tau in (1.0, 0.01):
        eager_out, eager_state = fm(params, fm.state(), images, training=True, temperature=tau)
        graph_out, graph_state = compiled(params, fm.state(), images, tf.constant(tau))
        tf.debugging.assert_near(eager_out, graph_out, atol=1e-5)
        for path in eager_state:
            tf.debugging.assert_near(eager_state[path], graph_state[path], atol=1e-5)


def _second_order_arch_grads(net, images):
    fm = FunctionalModel(net)
    labels = tf.constant([0, 1, 2, 0])

    def loss_fn(logits):
        return tf.reduce_mean(
            tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )

    @tf.function
    def meta_grads(params, state, tau):
        with tf.GradientTape() as outer:
            outer.watch(params)
            with tf.GradientTape() as inner:
                inner.watch(params)
                logits, new_state = fm(params, state, images, training=True, temperature=tau)
                loss = loss_fn(logits)
            grads = inner.gradient(loss, params)
            fast = {p: params[p] - 0.5 * grads[p] for p in params}
            logits, _ = fm(fast, new_state, images, training=True, temperature=tau)
            meta_loss = loss_fn(logits)
        return outer.gradient(meta_loss, params)

    grads = meta_grads(fm.params(), fm.state(), tf.constant(0.5))
    return {p: float(tf.norm(g)) for p, g in grads.items() if fm.group_of[p] == "arch"}


def test_second_order_arch_gradients_reach_alpha_and_beta(images):
    # Soft pruning off and two cheap ops: second-order graphs through tf.cond
    # take minutes to build (see the module docstring of darts.py).
    net = make_net(prune_threshold=0.0, primitives=("avg_pool_3x3", "skip_connect"))
    norms = _second_order_arch_grads(net, images)
    for path, norm in norms.items():
        if path.endswith("beta_normal_0") or path.endswith("beta_reduce_0"):
            assert norm == 0.0  # One subset only: softmax is constant.
        else:
            assert norm > 0.0, path


def test_arch_gradients_through_soft_pruning_conds(images):
    net = make_net(primitives=("avg_pool_3x3", "skip_connect"))
    fm = FunctionalModel(net)

    @tf.function
    def grads(params, tau):
        with tf.GradientTape() as tape:
            tape.watch(params)
            logits, _ = fm(params, fm.state(), images, training=True, temperature=tau)
            loss = tf.reduce_sum(logits[:, 0])
        return tape.gradient(loss, params)

    params = fm.params()
    g = grads(params, tf.constant(1.0))
    for path in fm.paths_of("arch"):
        if not path.endswith("_0"):
            assert float(tf.norm(g[path])) > 0.0, path


# -- soft pruning: skipped ops are not computed ------------------------------------


def _instrument(net, counter):
    """Makes every candidate op bump `counter` (python list or tf.Variable) when run."""
    for cell in net.cells:
        for edge in cell.edges:
            for op in edge.ops:
                original = op.call

                def call(x, training=False, memo=None, scale=None, original=original):
                    if isinstance(counter, list):
                        counter.append(1)
                    else:
                        counter.assign_add(1)
                    return original(x, training=training, memo=memo, scale=scale)

                op.call = call


def _expected_computed(net, params, tau):
    """Ops with weight >= threshold on edges in a kept subset, per the genotype."""
    g = net.genotype(params, temperature=tau, threshold=net.prune_threshold)
    kinds = [g.reduce if c.reduction else g.normal for c in net.cells]
    return sum(len(e.ops) for cell in kinds for node in cell.nodes for e in node.edges)


def test_soft_pruned_ops_are_not_computed_eager_and_graph(images):
    net = make_net(soft_prune="cond")
    fm = FunctionalModel(net)
    params = {**fm.params(), **sparse_arch(net, 1)}
    expected = _expected_computed(net, params, 0.01)
    total = sum(len(e.ops) for c in net.cells for e in c.edges)
    assert expected < total

    calls = []
    _instrument(net, calls)
    fm(params, fm.state(), images, training=True, temperature=0.01)
    assert len(calls) == expected
    calls.clear()
    fm(params, fm.state(), images, training=True, temperature=1.0)
    assert len(calls) == total  # Nothing is below 0.01 at T = 1.

    net2 = make_net(soft_prune="cond")
    fm2 = FunctionalModel(net2)
    params2 = {**fm2.params(), **sparse_arch(net2, 1)}
    counter = tf.Variable(0)
    _instrument(net2, counter)
    run = tf.function(lambda p, t: fm2(p, fm2.state(), images, training=False, temperature=t))
    run(params2, tf.constant(0.01))
    assert int(counter.numpy()) == _expected_computed(net2, params2, 0.01)


ALL_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "conv_1x5_5x1", "conv_3x3",
           "sep_conv_3x3", "dil_conv_3x3")


def _training_step(fm, x):
    """A compiled training-mode call at T = 0.01: (outputs, new state, gradients)."""

    @tf.function
    def step(params, state):
        with tf.GradientTape() as tape:
            tape.watch(params)
            out, new_state = fm(params, state, x, training=True, temperature=0.01)
            loss = tf.reduce_sum(tf.sin(out))
        return out, new_state, tape.gradient(loss, params)

    return step


@pytest.mark.parametrize("size", [8, 9])
def test_masked_soft_pruning_equals_skipping_ops_with_conds(size):
    # The same function, BN statistics and gradients (weights and architecture)
    # whether pruned ops are scaled by zero ("mask", sharing work between edges)
    # or skipped ("cond"); every op type, odd and even sizes.
    x = tf.random.stateless_normal((4, size, size, 1), seed=[3, 4])
    results = {}
    for mode in ("cond", "mask"):
        net = make_net(soft_prune=mode, primitives=ALL_OPS, num_nodes=3)
        if mode == "mask":
            net.set_weights(results["cond"][0])
        fm = FunctionalModel(net)
        params = {**fm.params(), **sparse_arch(net, 1)}
        step = _training_step(fm, x)
        results[mode] = (net.get_weights(), *step(params, fm.state()))
    _, out_c, state_c, grads_c = results["cond"]
    _, out_m, state_m, grads_m = results["mask"]
    tf.debugging.assert_near(out_m, out_c, atol=1e-5, rtol=1e-5)
    moved = 0
    for path in state_c:
        tf.debugging.assert_near(state_m[path], state_c[path], atol=1e-6, rtol=1e-5)
        moved += int(path.endswith("moving_mean") and bool(tf.reduce_any(state_c[path] != 0)))
    assert 0 < moved < sum(p.endswith("moving_mean") for p in state_c)  # Some ops were pruned.
    for path in grads_c:
        # Round-off only: the shared ReLU/pooling/BN regroup sums (|g| up to ~1.5).
        tf.debugging.assert_near(grads_m[path], grads_c[path], atol=5e-5, rtol=1e-4)


def test_without_running_stats_training_is_the_same_and_leaves_the_statistics():
    """`running_stats=False` (transductive BN): same outputs and gradients in
    training mode, moving statistics untouched, a smaller traced graph."""
    x = tf.random.stateless_normal((4, 9, 9, 1), seed=[3, 4])
    results = {}
    for track in (True, False):
        net = make_net(primitives=ALL_OPS, num_nodes=3, running_stats=track)
        if not track:
            net.set_weights(results[True][0])
        fm = FunctionalModel(net)
        params = {**fm.params(), **sparse_arch(net, 1)}
        step = _training_step(fm, x)
        state = fm.state()
        nodes = len(step.get_concrete_function(params, state).graph.as_graph_def().node)
        results[track] = (net.get_weights(), state, nodes, *step(params, state))
    _, state_before, nodes_t, out_t, state_t, grads_t = results[True]
    _, _, nodes_f, out_f, state_f, grads_f = results[False]
    tf.debugging.assert_near(out_f, out_t, atol=1e-6, rtol=1e-6)
    for path in grads_t:
        tf.debugging.assert_near(grads_f[path], grads_t[path], atol=1e-6, rtol=1e-5)
    assert any(not np.allclose(state_t[p], state_before[p]) for p in state_t)
    for path, value in state_f.items():
        np.testing.assert_array_equal(value, state_before[path], err_msg=path)
    assert nodes_f < nodes_t


def test_running_bn_mode_needs_running_stats():
    from tfmetanas.experiment import trainer
    from tfmetanas.experiment.defaults import metanas_config

    config = metanas_config("glyphs", 3, 1, 1, arch_lr=1e-3)
    assert config.model.darts.running_stats is False  # transductive: never read
    config.inner.bn_mode = "running"
    with pytest.raises(errors.ConfigError, match="running_stats"):
        trainer.Experiment(config, splits=("train",))


# -- hard pruning and the discrete network --------------------------------------


@pytest.mark.parametrize("training", [False, True])
def test_discrete_network_equals_search_network_when_pruned_weights_are_zero(net, images, training):
    fm = FunctionalModel(net)
    rng = tf.random.Generator.from_seed(5)
    # "Adapted" weights and BN statistics that differ from the variables.
    params = {p: v + 0.05 * rng.normal(v.shape) for p, v in fm.params("weights").items()}
    params.update(sparse_arch(net, 2))
    tau = 0.01
    _, state = fm(params, fm.state(), images, training=True, temperature=tau)
    search_out, _ = fm(params, state, images, training=training, temperature=tau)

    discrete, geno = darts.discrete_from_search(net, params, state, temperature=tau, threshold=0.01)
    # Something was pruned, and weights of kept ops are exactly the search ones.
    n_kept = sum(len(e.ops) for n in geno.normal.nodes + geno.reduce.nodes for e in n.edges)
    assert n_kept < 2 * len(net.cells[0].edges) * len(PRIMS)
    discrete_out = discrete(images, training=training)
    tf.debugging.assert_near(search_out, discrete_out, atol=1e-5, rtol=1e-5)

    # Through a FunctionalModel of the discrete network too (what export uses).
    dfm = FunctionalModel(discrete)
    out, _ = dfm(dfm.params(), dfm.state(), images, training=training)
    tf.debugging.assert_near(search_out, out, atol=1e-5, rtol=1e-5)


def test_pruned_parameter_count_equals_manual_count(net):
    params = sparse_arch(net, 3)
    discrete, geno = darts.discrete_from_search(net, params, temperature=0.01)
    fm = FunctionalModel(net)
    full = fm.count_params(("weights",))
    kept = set()
    for c, cell in enumerate(net.cells):
        g = geno.reduce if cell.reduction else geno.normal
        offsets = [0, 2]
        for j, node in enumerate(g.nodes):
            for e in node.edges:
                for name, _ in e.ops:
                    kept.add((c, offsets[j] + e.input, PRIMS.index(name)))
    dropped = sum(
        int(np.prod(v.shape))
        for c, cell in enumerate(net.cells)
        for e, edge in enumerate(cell.edges)
        for o, op in enumerate(edge.ops)
        if (c, e, o) not in kept
        for v in op.trainable_variables
    )
    assert darts.count_params(discrete) == full - dropped
    assert darts.count_params(discrete) == sum(
        int(np.prod(v.shape)) for v in discrete.trainable_variables
    )
    assert darts.count_params(discrete) < full


def test_derive_genotype_thresholds_ops_and_subsets():
    alpha = np.log(np.array([[0.7, 0.295, 0.005]] * 5, np.float32))
    betas = [np.zeros(1), np.log(np.array([0.6, 0.395, 0.005]))]
    g = genotype.derive_genotype(
        alpha, betas, alpha, betas, temperature=1.0, threshold=0.01, primitives=PRIMS
    )
    node = g.normal.nodes[1]
    assert [s for s, _ in node.subsets] == [(0, 1), (0, 2)]
    assert [e.input for e in node.edges] == [0, 1, 2]
    assert [op for op, _ in node.edges[0].ops] == ["max_pool_3x3", "skip_connect"]
    assert node.edge_coefficients()[0] == pytest.approx(0.995, abs=1e-6)


def test_none_strategy_is_darts_top2_inputs_top1_op():
    prims = ("none",) + PRIMS
    rng = np.random.default_rng(0)
    alpha = rng.normal(size=(5, 4)).astype(np.float32)
    alpha[:, 0] = 10.0  # `none` dominates but is never chosen.
    g = genotype.derive_genotype(
        alpha, None, alpha, None, temperature=0.1, strategy="none", primitives=prims
    )
    for node in g.normal.nodes:
        assert len(node.edges) == 2 and all(len(e.ops) == 1 for e in node.edges)
        assert all(e.ops[0][0] != "none" for e in node.edges)
    node1 = g.normal.nodes[1]
    strength = alpha[2:5, 1:].max(axis=1)
    assert [e.input for e in node1.edges] == sorted(np.argsort(-strength)[:2].tolist())


@pytest.mark.parametrize("strategy", ["none", "ops"])
def test_other_strategies_build_and_prune(strategy, images):
    net = make_net(sparsify=strategy)
    assert not net.beta_normal
    fm = FunctionalModel(net)
    out, _ = fm(fm.params(), fm.state(), images, training=True, temperature=0.1)
    assert out.shape == (4, 3)
    discrete, geno = darts.discrete_from_search(net, temperature=0.1)
    assert geno.strategy == strategy
    assert all(len(n.edges) == 2 for n in geno.normal.nodes)
    assert discrete(images).shape == (4, 3)


def test_genotype_json_round_trip(net):
    geno = net.genotype(sparse_arch(net, 4), temperature=0.01)
    text = geno.to_json()
    assert genotype.Genotype.from_json(text) == geno
    assert genotype.Genotype.from_json(json.dumps(json.loads(text))).to_json() == text


# -- plotting --------------------------------------------------------------------


def test_plots_write_pngs(tmp_path):
    net_like = make_net(num_nodes=3)
    geno = net_like.genotype(sparse_arch(net_like, 6), temperature=0.01)
    cell_png = plotting.plot_genotype(geno, str(tmp_path / "cells.png"))
    hist_png = plotting.plot_size_histogram([1200, 1500, 1500, 3100], str(tmp_path / "h.png"))
    for path in (cell_png, hist_png):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("strategy,threshold", [("ops_and_inputs", 0.01),
                                                ("ops_and_inputs", 0.0), ("ops", 0.01),
                                                ("none", 0.0)])
def test_hard_prune_tensor_equals_python_bool(strategy, threshold, images):
    # A boolean tensor picks, in one graph, what hard_prune=True/False build.
    # "none" ignores the threshold: the unpruned network computes every op.
    net = make_net(sparsify=strategy, prune_threshold=threshold, hard_threshold=0.2)
    fm = FunctionalModel(net)
    params = {**fm.params(), **sparse_arch(net, 7, keep=(1.0, 0.2))}

    @tf.function
    def both(flag):
        return fm(params, fm.state(), images, training=True, temperature=0.3, hard_prune=flag)[0]

    for flag in (False, True):
        want, _ = fm(params, fm.state(), images, training=True, temperature=0.3, hard_prune=flag)
        np.testing.assert_allclose(both(tf.constant(flag)).numpy(), want.numpy(), rtol=1e-5,
                                   atol=1e-6, err_msg=f"hard_prune={flag}")
    pruned = both(tf.constant(True)).numpy()
    assert not np.allclose(pruned, both(tf.constant(False)).numpy()), "pruning changed nothing"
