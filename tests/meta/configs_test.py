"""Every shipped paper config builds its model and algorithm and runs two meta-steps.

The configs are shrunk (small images, few filters/channels, meta-batch 2) but
keep their structure: backbone, per-step BN, update rule, MSL, DA, groups,
ways and shots. Tasks are random tensors of the config's shapes, so no data
set is needed.
"""

import glob
import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from tfmetanas.meta import algorithms
from tfmetanas.models import params as params_lib
from tfmetanas.models import zoo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "*", "*.py"))
    if os.path.basename(os.path.dirname(p)) in ("omniglot", "miniimagenet", "sinusoid")
)
CHANNELS = {"omniglot": 1, "omniglot_tfds": 1, "glyphs": 1, "miniimagenet": 3}


def load_config(relpath):
    spec = importlib.util.spec_from_file_location("config_under_test", os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def shrink(config):
    """Small shapes with the config's structure intact."""
    with config.unlocked():
        config.data.image_size = 16
        config.model.filters = 3
        config.model.channels = (2, 2, 2, 2)
        if config.model.get("name") == "mlp":
            config.model.hidden = tuple(8 for _ in config.model.hidden)
        config.meta.meta_batch_size = 2
        config.data.queries = min(int(config.data.queries), 2)
        config.data.ways = min(int(config.data.ways), 3)
        config.data.shots = min(int(config.data.shots), 2)
        # Two inner steps keep MSL, per-step BN (tied to inner.steps) and the
        # step-indexed rules meaningful at a fraction of the cost.
        config.inner.steps = min(int(config.inner.steps), 2)
        config.inner.eval_steps = min(int(config.inner.eval_steps), 2)
        if config.model.get("name") == "darts":
            config.model.darts.channels = 4
            config.model.darts.num_cells, config.model.darts.reduction_cells = 2, (1,)
            config.model.darts.num_nodes = 2
            config.model.darts.prune_threshold = 0.0
            config.metanas.eval_arch_steps = config.metanas.eval_weight_steps = 2
    return config


def random_tasks(config, kind, seed=0):
    g = tf.random.Generator.from_seed(seed)
    batch = int(config.meta.meta_batch_size)
    shots, queries = int(config.data.shots), int(config.data.queries)
    if kind == "regression":
        x = lambda n: g.uniform([batch, n, 1], -5.0, 5.0)  # noqa: E731
        return {"support_x": x(shots), "support_y": x(shots), "query_x": x(queries),
                "query_y": x(queries)}
    ways, size = int(config.data.ways), int(config.data.image_size)
    channels = CHANNELS[config.data.source]
    labels = lambda n: tf.tile(tf.range(ways)[None], [batch, n])  # noqa: E731
    return {
        "support_x": g.uniform([batch, ways * shots, size, size, channels]),
        "support_y": labels(shots),
        "query_x": g.uniform([batch, ways * queries, size, size, channels]),
        "query_y": labels(queries),
    }


def test_configs_are_found():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"mamlpp_20w5s.py", "alfa_random_init_5w5s.py", "alfa_maml_5w5s_resnet12.py",
            "alfa_maml_20shot_3x80.py", "maml_5w1s.py", "reptile_5w5s.py"} <= names


@pytest.mark.parametrize("relpath", CONFIGS)
def test_config_runs_two_meta_steps(relpath):
    config = shrink(load_config(relpath))
    kind = "regression" if config.data.source == "sinusoid" else "classification"
    if kind == "regression":
        input_shape, output_dim = (1,), 1
    else:
        size = int(config.data.image_size)
        input_shape = (size, size, CHANNELS[config.data.source])
        output_dim = int(config.data.ways)
    model = zoo.build_model(config.model, input_shape, output_dim, seed=0)
    fmodel = params_lib.FunctionalModel(model)
    algorithm = algorithms.build_algorithm(config, fmodel, kind)
    meta = algorithm.meta_learner
    before = [v.numpy().copy() for v in meta.variables]

    # Both derivative orders the config uses (MAML++ DA switches between
    # them); METANAS: the warm-up step and one with the architecture adapted.
    last = int(config.train.steps) - 1
    iterations = sorted({0, max(algorithm.first_order_until, 1), last})
    steps = {}
    for i, iteration in enumerate(iterations + iterations[-1:] * (2 - len(iterations))):
        options = tuple(sorted(algorithm.step_options(iteration).items()))
        if options not in steps:
            steps[options] = tf.function(
                lambda t, it, o=options: meta.replica_step(t, it, **dict(o))
            )
        metrics = steps[options](random_tasks(config, kind, seed=i), tf.constant(iteration, tf.int64))
        assert np.isfinite(float(metrics["meta/loss"])), relpath
    changed = [not np.allclose(v.numpy(), b) for v, b in zip(meta.variables, before)]
    assert any(changed), relpath
    if tuple(config.meta.get("groups", ("weights",))) == ():
        assert all(id(v) not in {id(w) for w in fmodel.trainable_variables} for v in meta.variables)
    scalars = algorithm.scalars(iterations[-1])
    if config.meta.get("msl", False):
        np.testing.assert_allclose(np.sum(scalars["msl/weights"]), 1.0, rtol=1e-6)
