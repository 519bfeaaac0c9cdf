"""ResNet-12: shapes, registry, and second-order meta-gradients against finite differences."""

import keras
import pytest
import tensorflow as tf

from tests.meta import helpers
from tests.meta.alfa_test import finite_difference_check
from tfmetanas.meta import inner, learners, rules
from tfmetanas.models import backbones, zoo
from tfmetanas.models import params as params_lib


def _tiny(size=16, channels=(2, 2, 2, 2), ways=3, bn=None, pooling="avg"):
    model = zoo.build_model(
        {"name": "resnet12", "channels": channels, "pooling": pooling, "bn": bn},
        (size, size, 1), ways, seed=0,
    )
    return params_lib.FunctionalModel(model)


@pytest.mark.parametrize("pooling", ["avg", "flatten"])
def test_output_shape_and_structure(pooling):
    fm = _tiny(channels=(3, 4, 5, 6), ways=5, pooling=pooling,
               bn={"num_steps": 2, "per_step_stats": True, "per_step_affine": True})
    assert isinstance(fm.model, backbones.ResNet12)
    out, state = fm(fm.params(), None, tf.zeros([4, 16, 16, 1]), training=True, step=1)
    assert out.shape == (4, 5)
    # 4 blocks x (3 convs + 1 shortcut) kernels and the head kernel/bias.
    weights = fm.paths_of("weights")
    assert len([p for p in weights if "kernel" in p]) == 17
    assert len(set(fm.paths)) == len(fm.paths)
    # Every normalisation is per-step (BNRS/BNWB) and in the meta group.
    assert len(fm.paths_of("meta")) == 4 * 4 * 2
    assert all(v.shape[0] == 2 for v in fm.variables("meta"))
    assert set(state) == set(fm.state_paths)


def test_default_channels():
    model = backbones.ResNet12(5)
    assert [b.convs[0].filters for b in model.blocks] == [64, 128, 256, 512]


@pytest.fixture
def float64():
    # The dtype policy too: Keras fixes the global policy from floatx at the
    # first layer it builds in the process, so floatx alone is not enough.
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")


def test_second_order_meta_gradient_matches_finite_differences(float64):
    del float64
    fm = _tiny()
    learner = inner.TaskLearner(fm, {"weights": rules.SGD(0.3)}, 1)
    meta = learners.MAML(learner, keras.optimizers.SGD(1.0))
    tasks = helpers.random_tasks(batch=1, ways=3, shots=2, queries=2, size=16, dtype=tf.float64)
    kernels = [v for v in fm.variables("weights") if "kernel" in v.path]
    # One conv of the first and of the last block, a shortcut, the head.
    chosen = [kernels[0], kernels[3], kernels[-2], kernels[-1]]
    # eps = 1e-6: with 1e-5 one probe of the first conv crosses a max-pool
    # argmax switch (measured: the difference quotient jumps to 238 at 1e-4).
    checked = finite_difference_check(meta, tasks, chosen, per_variable=2, eps=1e-6)
    assert checked == 8
