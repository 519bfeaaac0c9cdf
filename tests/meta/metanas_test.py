"""METANAS on the engine: pruning in-graph, warm-up, Reptile per group, 50+50, end to end."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers
from tfmetanas import errors
from tfmetanas.experiment import evaluate, trainer
from tfmetanas.experiment.defaults import base_config
from tfmetanas.meta import inner, learners, metanas, rules
from tfmetanas.models import params as params_lib
from tfmetanas.nas import darts

PRIMS = ("max_pool_3x3", "skip_connect", "conv_3x3")


def tiny_search(sparsify="ops_and_inputs", prune_threshold=0.01, seed=0, running_stats=True):
    keras.utils.set_random_seed(seed)
    net = darts.SearchNetwork(3, channels=4, num_cells=2, reduction_cells=(1,), num_nodes=2,
                              primitives=PRIMS, sparsify=sparsify,
                              prune_threshold=prune_threshold, running_stats=running_stats)
    net(tf.zeros((2, 8, 8, 1)))
    return params_lib.FunctionalModel(net)


def random_arch(fm, scale=3.0, seed=1):
    rng = np.random.default_rng(seed)
    return {v.path: tf.constant(scale * rng.standard_normal(v.shape), tf.float32)
            for v in fm.variables("arch")}


def tiny_metanas(fm, meta="reptile", arch_steps=3, weight_steps=2, warmup_until=0):
    learner = inner.TaskLearner(
        fm, {"weights": rules.SGD(0.05), "arch": rules.SGD(0.5)}, 2,
        forward_kwargs=metanas.TemperatureAnnealing(1.0, 0.1),
    )
    fixed = inner.TaskLearner(fm, learner.rules, 2,
                              forward_kwargs=metanas.ConstantTemperature(0.1))
    if meta == "reptile":
        meta_learner = learners.Reptile(learner, {"weights": 1.0, "arch": 0.6})
    else:
        meta_learner = learners.MAML(learner, keras.optimizers.SGD(0.1))
    return metanas.MetaNAS(learner, meta_learner, fixed, arch_steps, weight_steps,
                           warmup_until=warmup_until, t_min=0.1)


def arch_values(fm):
    return {v.path: v.numpy() for v in fm.variables("arch")}


def weight_values(fm):
    return {v.path: v.numpy() for v in fm.variables("weights")}


@pytest.mark.parametrize("sparsify", ["none", "ops", "ops_and_inputs"])
@pytest.mark.parametrize("training", [False, True])
def test_in_graph_hard_pruning_equals_the_discrete_network(sparsify, training):
    # No soft pruning, so the unpruned forward below computes every op.
    fm = tiny_search(sparsify, prune_threshold=0.0)
    net = fm.model
    params = {**fm.params(("weights",)), **random_arch(fm)}
    images = tf.random.stateless_uniform((4, 8, 8, 1), seed=[3, 4])
    tau = 0.1
    pruned, _ = fm(params, fm.state(), images, training=training, temperature=tau,
                   hard_prune=True)
    discrete, geno = darts.discrete_from_search(net, params, temperature=tau,
                                                threshold=net.hard_threshold)
    n_kept = sum(len(e.ops) for n in geno.normal.nodes + geno.reduce.nodes for e in n.edges)
    assert n_kept < 2 * len(net.cells[0].edges) * len(PRIMS)  # something was pruned
    np.testing.assert_allclose(pruned.numpy(), discrete(images, training=training).numpy(),
                               rtol=1e-4, atol=1e-5)
    # Pruning changed the function of the full search network (not vacuous)...
    soft, _ = fm(params, fm.state(), images, training=training, temperature=tau)
    assert not np.allclose(soft.numpy(), pruned.numpy(), atol=1e-4)
    # ... and the parameter count needs no network build.
    assert net.pruned_param_count(geno) == darts.count_params(discrete)


def test_temperature_anneals_linearly_per_task():
    schedule = metanas.TemperatureAnnealing(1.0, 0.1)
    taus = [float(schedule(s, 4)["temperature"]) for s in range(4)]
    np.testing.assert_allclose(taus, [1.0, 0.7, 0.4, 0.1], rtol=1e-6)
    assert float(schedule(0, 50)["temperature"]) == 1.0  # reset for every task


def test_one_inner_step_updates_weights_and_arch_from_the_same_point():
    # Paper Eq. 3: both groups step on the same support batch, with gradients
    # taken at the same (live) weights and architecture.
    fm = tiny_search(prune_threshold=0.0)
    alg = tiny_metanas(fm)
    task = {k: v[0] for k, v in helpers.random_tasks(batch=1).items()}
    result = alg.learner.adapt(task, num_steps=1)
    params = fm.params(("weights", "arch"))
    with tf.GradientTape() as tape:
        tape.watch(list(params.values()))
        logits, _ = fm(params, fm.state(), task["support_x"], training=True, temperature=1.0)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=task["support_y"], logits=logits))
    grads = tape.gradient(loss, params)
    for path, value in params.items():
        lr = 0.5 if fm.group_of[path] == "arch" else 0.05
        np.testing.assert_allclose(result.params[path].numpy(),
                                   (value - lr * grads[path]).numpy(), rtol=1e-5, atol=1e-6)
    assert any(float(tf.reduce_max(tf.abs(grads[v.path]))) > 0 for v in fm.variables("arch"))


def test_reptile_moves_weights_and_arch_by_their_own_step_sizes():
    fm = tiny_search(prune_threshold=0.0)
    alg = tiny_metanas(fm)
    tasks = helpers.random_tasks(batch=2)
    theta = fm.params(("weights", "arch"))
    adapted = [alg.learner.adapt({k: v[b] for k, v in tasks.items()}, params=dict(theta)).params
               for b in range(2)]
    alg.meta_learner.replica_step(tasks, tf.constant(0), **alg.step_options(0))
    for v in fm.variables("weights") + fm.variables("arch"):
        size = 0.6 if fm.group_of[v.path] == "arch" else 1.0
        mean = (adapted[0][v.path] + adapted[1][v.path]) / 2
        expected = theta[v.path] + size * (mean - theta[v.path])
        np.testing.assert_allclose(v.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("meta", ["reptile", "maml"])
def test_warmup_freezes_the_architecture(meta):
    fm = tiny_search(prune_threshold=0.0)
    alg = tiny_metanas(fm, meta=meta, warmup_until=2)
    tasks = helpers.random_tasks(batch=2)
    assert alg.step_options(1) == {"second_order": False, "adapt_groups": ("weights",)}
    assert alg.step_options(2) == {"second_order": False}
    arch0, weights0 = arch_values(fm), weight_values(fm)
    alg.meta_learner.replica_step(tasks, tf.constant(1), **alg.step_options(1))
    for path, value in arch_values(fm).items():
        np.testing.assert_array_equal(value, arch0[path], err_msg=path)
    assert any(not np.allclose(v, weights0[p]) for p, v in weight_values(fm).items())
    alg.meta_learner.replica_step(tasks, tf.constant(2), **alg.step_options(2))
    assert any(not np.allclose(v, arch0[p]) for p, v in arch_values(fm).items())


def test_one_loop_meta_test_equals_the_two_phases_run_apart():
    """`test_adapt` runs "50+50" in one loop: the numbers of the arch+weights loop
    followed by a weights-only loop at t_min with a fresh Adam (step-dependent
    learning rate counted from the phase's start, inner mini-batches)."""
    fm = tiny_search()

    def lr(step):
        return 0.01 * (1.0 + tf.cast(step, tf.float32))

    rules_ = {"weights": rules.Adam(lr, beta1=0.5), "arch": rules.Adam(0.05, beta1=0.5)}
    learner = inner.TaskLearner(fm, rules_, 2, batch_size=3, batch_seed=1,
                                forward_kwargs=metanas.TemperatureAnnealing(1.0, 0.1))
    fixed = inner.TaskLearner(fm, rules_, 2, batch_size=3, batch_seed=1,
                              forward_kwargs=metanas.ConstantTemperature(0.1))
    alg = metanas.MetaNAS(learner, learners.Reptile(learner, {"weights": 1.0}), fixed, 3, 2,
                          warmup_until=0, t_min=0.1)
    task = {k: v[0] for k, v in helpers.random_tasks(batch=1).items()}
    assert task["support_x"].shape[0] > 3  # mini-batches, not the whole support set
    first = learner.adapt(task, num_steps=3, use_while_loop=True)
    second = fixed.adapt(task, params=first.params, state=first.state, num_steps=2,
                         groups=("weights",), use_while_loop=True)
    # Float32 round-off only: Adam's normalised steps amplify it for entries whose
    # gradients are near zero (seen: one weight of 48 off by 2.5e-6 under CI's load,
    # where reductions split differently), so 1e-4 / 1e-5 here and a change of the
    # algorithm (no restart, below) must move some weight by far more.
    for run in (alg.test_adapt, tf.function(alg.test_adapt)):
        merged = run(task)
        for path, value in second.params.items():
            np.testing.assert_allclose(merged.params[path], value, rtol=1e-4, atol=1e-5,
                                       err_msg=path)
        for path, value in second.state.items():
            np.testing.assert_allclose(merged.state[path], value, rtol=1e-4, atol=1e-5,
                                       err_msg=path)
        np.testing.assert_allclose(
            merged.support_losses,
            np.concatenate([first.support_losses, second.support_losses]), rtol=1e-5)
        np.testing.assert_allclose(merged.query_losses[0], second.query_losses[-1], rtol=1e-5)
    # Without the restart of Adam in the second phase the weights differ.
    phases = [inner.Phase(3, ("weights", "arch"), learner.forward_kwargs),
              inner.Phase(2, ("weights",), fixed.forward_kwargs)]
    kept = learner.adapt_phases(task, phases)
    assert any(not np.allclose(kept.params[p], v, rtol=1e-3, atol=1e-3)
               for p, v in second.params.items())


def test_meta_test_takes_its_own_batch_size():
    """`metanas.eval_batch_size` (the reference's `batch_size_test`): a learner
    training on the whole support set meta-tests on mini-batches of 3, the same
    numbers as learners built with mini-batches of 3."""
    fm = tiny_search()
    rules_ = {"weights": rules.Adam(0.01, beta1=0.5), "arch": rules.Adam(0.05, beta1=0.5)}

    def build(batch_size, eval_batch_size):
        learner = inner.TaskLearner(fm, rules_, 2, batch_size=batch_size, batch_seed=1,
                                    forward_kwargs=metanas.TemperatureAnnealing(1.0, 0.1))
        fixed = inner.TaskLearner(fm, rules_, 2, batch_size=batch_size, batch_seed=1,
                                  forward_kwargs=metanas.ConstantTemperature(0.1))
        return metanas.MetaNAS(learner, learners.Reptile(learner, {"weights": 1.0}), fixed,
                               3, 2, warmup_until=0, t_min=0.1,
                               eval_batch_size=eval_batch_size)

    task = {k: v[0] for k, v in helpers.random_tasks(batch=1).items()}
    assert task["support_x"].shape[0] > 3
    own = build(0, 3).test_adapt(task)
    reference = build(3, None).test_adapt(task)
    whole = build(0, None).test_adapt(task)
    for path, value in reference.params.items():
        np.testing.assert_allclose(own.params[path], value, rtol=1e-5, atol=1e-6, err_msg=path)
    np.testing.assert_allclose(own.support_losses, reference.support_losses, rtol=1e-5)
    assert not np.allclose(own.support_losses, whole.support_losses, rtol=1e-3)
    # 0 is the whole support set, as for inner.batch_size.
    np.testing.assert_allclose(build(3, 0).test_adapt(task).support_losses,
                               whole.support_losses, rtol=1e-5)
    # The meta-test reads no rule state: the loop's packed Adam moments are not unpacked.
    assert own.rule_states is None
    assert build(0, -1).eval_batch_size is None  # -1, the config's default: inner.batch_size
    for bad in (-2, 2.5, "10", True):
        with pytest.raises(errors.ConfigError, match="eval_batch_size"):
            build(0, bad)
    with pytest.raises(errors.ConfigError, match="batch size must be >= 0"):
        build(0, None).learner.adapt_phases(
            task, [inner.Phase(2, ("weights",), metanas.TemperatureAnnealing(1.0, 0.1))],
            batch_size=-1)


def test_adapt_phases_rejects_bad_phases():
    fm = tiny_search()
    learner = tiny_metanas(fm).learner
    task = {k: v[0] for k, v in helpers.random_tasks(batch=1).items()}
    with pytest.raises(errors.ConfigError, match="at least one step"):
        learner.adapt_phases(task, [inner.Phase(0, ("weights",), learner.forward_kwargs)])
    with pytest.raises(errors.ConfigError, match="without a rule"):
        learner.adapt_phases(task, [inner.Phase(2, ("meta",), learner.forward_kwargs)])
    with pytest.raises(errors.ConfigError, match="same call arguments"):
        learner.adapt_phases(task, [inner.Phase(2, ("weights",), learner.forward_kwargs),
                                    inner.Phase(2, ("weights",), inner.default_forward_kwargs)])


def compiled_step(alg, options):
    return tf.function(lambda tasks, i: alg.meta_learner.replica_step(tasks, i, **options))


def graph_nodes(concrete):
    graph = concrete.graph.as_graph_def()
    return len(graph.node) + sum(len(f.node_def) for f in graph.library.function)


@pytest.mark.parametrize("meta", ["reptile", "maml"])
def test_without_running_stats_meta_steps_carry_no_state_and_move_the_same(meta):
    """`running_stats=False`: training calls neither read nor write the BN state,
    so the task and inner loops carry none (`FunctionalModel.training_state` is
    empty): a compiled meta-step moves the variables as carrying the state did,
    in a smaller graph, and the statistics stay."""
    results = {}
    for carried in (True, False):
        fm = tiny_search(prune_threshold=0.0, running_stats=False)
        assert fm.training_uses_state is False and fm.training_state() == {}
        if carried:
            fm.training_uses_state = True  # Read, carried through the loops, assigned back.
        alg = tiny_metanas(fm, meta=meta)
        tasks = helpers.random_tasks(batch=2)
        state0 = {p: v.numpy() for p, v in fm.state().items()}
        step = compiled_step(alg, alg.step_options(0))
        nodes = graph_nodes(step.get_concrete_function(tasks, tf.constant(0)))
        step(tasks, tf.constant(0))
        results[carried] = ({**weight_values(fm), **arch_values(fm)}, nodes)
        for path, value in fm.state().items():
            np.testing.assert_array_equal(value.numpy(), state0[path], err_msg=path)
    (moved_t, nodes_t), (moved_f, nodes_f) = results[True], results[False]
    for path, value in moved_t.items():
        np.testing.assert_allclose(moved_f[path], value, rtol=1e-5, atol=1e-6, err_msg=path)
    assert nodes_f < nodes_t


def test_training_state_calls_read_nothing_and_a_false_claim_is_refused():
    fm = tiny_search(running_stats=False)
    images = tf.random.stateless_uniform((4, 8, 8, 1), seed=[5, 6])
    params = {**fm.params(), **random_arch(fm)}
    # Inference reads the variables for a left-out state, as before.
    out, _ = fm(params, {}, images, training=False, temperature=0.5)
    ref, _ = fm(params, fm.state(), images, training=False, temperature=0.5)
    np.testing.assert_array_equal(out.numpy(), ref.numpy())
    # Training gets NaN constants for the state: finite outputs show it reads none.
    out, new_state = fm(params, {}, images, training=True, temperature=0.5)
    assert new_state == {} and np.all(np.isfinite(out.numpy()))
    # A model that updates its statistics cannot claim to leave them alone.
    tracking = tiny_search(running_stats=True)
    tracking.training_uses_state = False
    with pytest.raises(errors.ConfigError, match="training_uses_state"):
        tracking(tracking.params(), {}, images, training=True, temperature=0.5)


def test_meta_test_adapts_arch_then_weights_only():
    fm = tiny_search()
    alg = tiny_metanas(fm, arch_steps=3, weight_steps=2)
    task = {k: v[0] for k, v in helpers.random_tasks(batch=1).items()}
    first = alg.learner.adapt(task, num_steps=3, use_while_loop=True)
    final = alg.test_adapt(task)
    for v in fm.variables("arch"):
        np.testing.assert_allclose(final.params[v.path].numpy(), first.params[v.path].numpy(),
                                   err_msg=v.path)
    assert any(not np.allclose(first.params[v.path].numpy(), v.numpy())
               for v in fm.variables("arch"))
    assert any(not np.allclose(final.params[v.path].numpy(), first.params[v.path].numpy())
               for v in fm.variables("weights"))
    # The last query metric is the pruned network's, the one before the search network's.
    # Both are scored in one loop (hard pruning a run-time argument): the same
    # numbers as the two forward passes built separately.
    pruned = alg.pruned_forward(final.params, final.state, task["query_x"])
    np.testing.assert_allclose(final.query_outputs.numpy(), pruned.numpy(), rtol=1e-6)
    assert final.query_metrics.shape == (2,)
    _, loss, metric = alg.learner._query(final.params, final.state, task, 0, 1,  # noqa: SLF001
                                         alg.fixed_learner.forward_kwargs)
    np.testing.assert_allclose(final.query_losses[0].numpy(), loss.numpy(), rtol=1e-5)
    np.testing.assert_allclose(final.query_metrics[0].numpy(), metric.numpy(), rtol=1e-6)
    pruned_loss, _ = inner.loss_and_metric(alg.learner.kind, pruned, task["query_y"])
    np.testing.assert_allclose(final.query_losses[1].numpy(), pruned_loss.numpy(), rtol=1e-5)


def metanas_config(algorithm="reptile"):
    c = base_config()
    c.data.source = "glyphs"
    c.data.image_size = 14
    c.data.ways, c.data.shots, c.data.queries = 3, 1, 2
    c.model.name = "darts"
    c.model.darts.channels = 4
    c.model.darts.num_cells = 2
    c.model.darts.reduction_cells = (1,)
    c.model.darts.num_nodes = 2
    c.model.darts.primitives = PRIMS
    c.model.darts.prune_threshold = 0.0  # no tf.cond per op: traces in seconds
    c.inner.groups = ("weights", "arch")
    c.inner.rule, c.inner.lr = "adam", 1e-3
    c.inner.arch = {"lr": 5e-4, "weight_decay": 1e-3}
    c.inner.steps = 2
    c.meta.algorithm = algorithm
    c.meta.step_sizes = {"weights": 1.0, "arch": 0.6}
    c.meta.meta_batch_size = 2
    c.metanas.eval_arch_steps, c.metanas.eval_weight_steps = 3, 2
    c.train.steps, c.train.eval_every, c.train.progress = 2, 0, False
    c.eval.num_tasks, c.eval.num_val_tasks, c.eval.batch_size = 3, 2, 2
    return c


def test_eval_batch_size_from_the_config():
    fm = tiny_search()
    config = metanas_config()
    assert metanas.build_algorithm(config, fm, "classification").eval_batch_size is None
    config.metanas.eval_batch_size = 10
    assert metanas.build_algorithm(config, fm, "classification").eval_batch_size == 10
    config.metanas.eval_batch_size = 0  # the whole support set, not "unset"
    assert metanas.build_algorithm(config, fm, "classification").eval_batch_size == 0
    config.metanas.eval_batch_size = -3
    with pytest.raises(errors.ConfigError, match="eval_batch_size"):
        metanas.build_algorithm(config, fm, "classification")


@pytest.mark.parametrize("algorithm", ["reptile", "maml"])
def test_train_and_evaluate_write_pruned_genotypes(tmp_path, algorithm):
    workdir = str(tmp_path / "run")
    trainer.train(metanas_config(algorithm), workdir)  # warm-up step 0, arch adapted at 1
    result = evaluate.evaluate_workdir(workdir, split="test")
    assert result["inner_steps"] == 5
    assert 0 < result["pruned_params_min"] <= result["pruned_params_mean"]
    assert result["pruned_params_max"] <= result["search_params"]
    assert "unpruned_accuracy_mean" in result
    with open(os.path.join(workdir, "genotypes_test.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [line["task"] for line in lines] == ["meta", 0, 1, 2]
    assert all(darts.Genotype.from_dict(line["genotype"]).primitives == PRIMS for line in lines)
