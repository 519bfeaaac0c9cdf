"""tfmetanas.compiled: the package's tf.functions trace without AutoGraph."""

import copy
import gc
import json
import os
import pathlib
import re
import weakref

import numpy as np
import pytest
import tensorflow as tf

from tests.meta import helpers, metanas_test
from tfmetanas import compiled, errors, memory
from tfmetanas.experiment import trainer
from tfmetanas.experiment import workdir as workdir_lib
from tfmetanas.experiment.defaults import base_config


def branchy(x):
    if tf.reduce_sum(x) > 0:  # Python control flow on a tensor: AutoGraph would convert it.
        return x
    return -x


def test_python_control_flow_on_tensors_is_not_converted():
    x = tf.constant([1.0, -3.0])
    # tf.function (AutoGraph on) converts the `if` into a tf.cond ...
    np.testing.assert_allclose(tf.function(branchy)(x).numpy(), [-1.0, 3.0])
    # ... the package's functions refuse it while tracing.
    with pytest.raises(TypeError, match="Python `bool`"):
        compiled.function(branchy)(x)


def test_decorator_forms_and_arguments_reach_tf_function():
    @compiled.function
    def double(x):
        return 2 * x

    @compiled.function(reduce_retracing=True, jit_compile=False)
    def triple(x):
        return 3 * x

    assert isinstance(double, tf.types.experimental.PolymorphicFunction)
    np.testing.assert_allclose(double(tf.constant(2.0)).numpy(), 4.0)
    np.testing.assert_allclose(triple(tf.constant(2.0)).numpy(), 6.0)
    with pytest.raises(TypeError, match="AutoGraph"):
        compiled.function(branchy, autograph=True)


def test_step_is_a_trimmed_function_with_the_eager_result():
    step = compiled.step(lambda x: tf.nn.relu(x) * 2.0, trim_interval=0.05)
    assert isinstance(step, memory.FirstCallTrimmed) and step.interval == 0.05
    x = tf.constant([[-1.0, 2.0]])
    np.testing.assert_allclose(step(x).numpy(), [[0.0, 4.0]])
    assert step.get_concrete_function(x) is not None


def test_the_package_makes_its_tf_functions_here():
    root = pathlib.Path(compiled.__file__).parent
    direct = re.compile(r"(@tf\.function\b|\btf\.function\()")
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for path in sorted(root.rglob("*.py")) if path.name != "compiled.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if direct.search(line.split("#")[0]) and "`tf.function" not in line
    ]
    assert not offenders, f"use tfmetanas.compiled.function: {offenders}"


@pytest.fixture
def restore_graph_optimizer():
    yield
    compiled.configure_graph_optimizer({})


def test_skipped_graph_optimizations_are_applied_whole_and_bad_names_refused(
        restore_graph_optimizer):
    options = tf.config.optimizer.get_experimental_options
    compiled.configure_graph_optimizer(
        {"skip_graph_optimizations": "remapping, constant_folding"})
    assert options()["remapping"] is False and options()["constant_folding"] is False
    assert options().get("arithmetic_optimization") is None  # TensorFlow's default: on.
    assert not options().get("disable_meta_optimizer")
    compiled.configure_graph_optimizer({"skip_graph_optimizations": ("layout_optimizer",)})
    assert options()["layout_optimizer"] is False and options().get("remapping") is None
    compiled.configure_graph_optimizer({"skip_graph_optimizations": "all"})
    assert options()["disable_meta_optimizer"] is True
    compiled.configure_graph_optimizer({})  # A config without the key: TensorFlow's defaults.
    assert not options().get("disable_meta_optimizer")
    assert all(options().get(name) is None for name in compiled.GRAPH_OPTIMIZATIONS)
    for bad in ("remaping", "all,remapping", "none"):
        with pytest.raises(errors.ConfigError, match="skip_graph_optimizations"):
            compiled.configure_graph_optimizer({"skip_graph_optimizations": bad})


def test_a_bad_pass_name_is_refused_before_the_workdir_is_touched(tmp_path):
    config = base_config()
    config.train.skip_graph_optimizations = "constant_fold"
    with pytest.raises(errors.ConfigError, match="skip_graph_optimizations"):
        trainer.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("skip", ["all", ",".join(compiled.GRAPH_OPTIMIZATIONS)])
def test_a_metanas_meta_step_moves_the_same_with_passes_skipped(skip, restore_graph_optimizer):
    moved = {}
    for choice in ("", skip):
        compiled.configure_graph_optimizer({"skip_graph_optimizations": choice})
        fm = metanas_test.tiny_search(prune_threshold=0.0, running_stats=False)
        alg = metanas_test.tiny_metanas(fm, meta="maml")
        tasks = helpers.random_tasks(batch=2)
        step = compiled.function(
            lambda tasks, i, alg=alg: alg.meta_learner.replica_step(tasks, i, **alg.step_options(1)))
        step(tasks, tf.constant(1))
        moved[choice] = {**metanas_test.weight_values(fm), **metanas_test.arch_values(fm)}
    assert moved[skip].keys() == moved[""].keys()
    for path, value in moved[""].items():
        np.testing.assert_allclose(moved[skip][path], value, rtol=1e-5, atol=1e-6, err_msg=path)


def test_a_run_from_before_the_new_keys_resumes(tmp_path):
    """Workdirs written before train.skip_graph_optimizations and
    model.darts.max_pool_gradient existed resume (neither changes what a
    checkpoint holds); another changed key is still refused."""
    config = base_config()
    workdir = str(tmp_path / "run")
    workdir_lib.prepare_workdir(workdir, config)
    tf.train.Checkpoint(step=tf.Variable(1)).save(os.path.join(workdir, "checkpoints", "ckpt"))
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        old = json.load(f)
    del old["train"]["skip_graph_optimizations"], old["model"]["darts"]["max_pool_gradient"]
    with open(path, "w") as f:
        json.dump(old, f)
    workdir_lib.prepare_workdir(workdir, config)
    config.train.seed = 7
    with pytest.raises(errors.CheckpointError, match="seed"):
        workdir_lib.prepare_workdir(workdir, config)


def _sum_of_squares_and_gradient(x):
    # A custom gradient reading the forward pass's tensors, as the package's batch norm.
    @tf.custom_gradient
    def square(x):
        return x * x, lambda dy: 2.0 * x * dy

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(square(x))
    return y, tape.gradient(y, x)


def test_a_released_step_lets_its_graph_go():
    step = compiled.step(_sum_of_squares_and_gradient, trim_interval=0)
    x = tf.constant([1.0, -2.0])
    y, g = step(x)
    np.testing.assert_allclose([y.numpy(), *g.numpy()], [5.0, 2.0, -4.0])
    table = compiled._gradient_registry()
    assert table is not None  # TensorFlow's private registry, where this version keeps it.
    names = set(step._custom_gradients)
    assert len(names) == 1 and names <= set(table)
    graph = weakref.ref(step.get_concrete_function(x).graph)
    gc.collect()
    assert graph() is not None  # Held by the step.
    step.release()
    gc.collect()
    # The traced graph is gone although the step object is still here: the
    # registry held it through the custom gradient's function.
    assert graph() is None
    assert not names & set(table)
    with pytest.raises(errors.TFMetaNASError, match="released"):
        step(x)
    with pytest.raises(errors.TFMetaNASError, match="released"):
        step.get_concrete_function(x)
    assert not hasattr(step, "get_concrete_function")
    copy.deepcopy(step)
    step.release()  # Twice is fine.


def test_steps_traced_one_after_another_record_the_custom_gradients_of_their_own_traces():
    step = compiled.step(_sum_of_squares_and_gradient, trim_interval=0, reduce_retracing=False)
    other = compiled.step(_sum_of_squares_and_gradient, trim_interval=0)
    step(tf.constant([1.0]))
    step(tf.constant([[1.0, 2.0]]))  # A second input signature: a second trace.
    other(tf.constant([3.0]))
    assert len(step._custom_gradients) == 2 and len(other._custom_gradients) == 1
    assert not step._custom_gradients & other._custom_gradients
    step.release()
    # The other step's registrations stay: it can still be differentiated from outside.
    assert other._custom_gradients <= set(compiled._gradient_registry())
    x = tf.constant([3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y, _ = other(x)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [6.0])
