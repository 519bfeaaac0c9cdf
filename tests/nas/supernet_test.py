"""BN recalibration and sub-model evaluation (supernet.py)."""

import numpy as np
import pytest
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.nas import nb201
from tfmetanas.nas import supernet as sn


def _setup():
    model = nb201.build_supernet(3, channels=4, cells_per_stage=1, image_size=8)
    rng = np.random.default_rng(0)
    calib = [rng.normal(size=(n, 8, 8, 3)).astype(np.float32) for n in (16, 5)]
    val_x = rng.normal(size=(10, 8, 8, 3)).astype(np.float32)
    val_y = rng.integers(0, 3, 10).astype(np.int32)
    return model, sn.SubmodelEvaluator(model, calib, val_x, val_y, batch_size=4), calib


def test_recalibration_changes_only_bn_statistics_of_the_subnet():
    model, evaluator, calib = _setup()
    arch = (3, 2, 0, 3, 1, 4)
    weights = [v.numpy() for v in model.trainable_variables]
    stats = {v.path: v.numpy() for v in model.non_trainable_variables}
    evaluator.recalibrate(arch)
    for v, w in zip(model.trainable_variables, weights):
        np.testing.assert_array_equal(v.numpy(), w)
    owners = model.candidate_variables()
    changed = 0
    for v in model.non_trainable_variables:
        same = np.array_equal(v.numpy(), stats[v.path])
        if v.path in owners and arch[owners[v.path][0]] != owners[v.path][1]:
            assert same, v.path
        changed += not same
    assert changed > 0
    # The stem BN mean is the average batch mean of the stem conv output.
    conv, bn = model.stem.steps
    means = [tf.reduce_mean(conv.forward(tf.constant(b))[0], [0, 1, 2]) for b in calib]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, 0), atol=1e-5)


def test_evaluate_restores_state_and_scores():
    model, evaluator, _ = _setup()
    before = [v.numpy() for v in model.non_trainable_variables]
    results = evaluator.evaluate_many([(3,) * 6, (1,) * 6])
    for r in results:
        assert 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["loss"])
    for v, b in zip(model.non_trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    # Validation batches of 4, 4 and 2 images, calibration batches of 16 and 5, two
    # sub-models: one trace of each function.
    assert evaluator._score.experimental_get_tracing_count() == 1
    assert evaluator._stats.experimental_get_tracing_count() == 1


def test_score_is_the_sub_models_validation_accuracy_and_loss():
    model, evaluator, _ = _setup()
    arch = (3, 2, 0, 3, 1, 4)
    accuracy, loss = evaluator.score(arch)
    logits = model(tf.constant(evaluator.val_images), training=False,
                   arch=tf.constant(arch, tf.int32))
    labels = evaluator.val_labels
    expected_loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True))
    np.testing.assert_allclose(loss, float(expected_loss), rtol=1e-5)
    assert accuracy == np.mean(np.argmax(logits.numpy(), -1) == labels)


def test_uint8_validation_images_are_kept_as_they_are_and_score_as_their_float_values():
    from tfmetanas.nas import supervised_data

    model, _, calib = _setup()
    pixels = np.random.default_rng(1).integers(0, 256, (10, 8, 8, 3), np.uint8)
    labels = np.random.default_rng(2).integers(0, 3, 10).astype(np.int32)
    kept = sn.SubmodelEvaluator(model, calib, pixels, labels, batch_size=4)
    assert kept.val_images.dtype == np.uint8 and kept.val_images.nbytes == pixels.nbytes
    floats = sn.SubmodelEvaluator(model, calib, supervised_data.to_float(pixels), labels,
                                  batch_size=4)
    np.testing.assert_array_equal(supervised_data.to_float(pixels),
                                  (pixels / 255.0).astype(np.float32))
    for arch in [(3, 2, 0, 3, 1, 4), (1,) * 6]:
        assert kept.evaluate(arch) == floats.evaluate(arch)


def test_calibration_images_of_another_size_are_refused():
    model, evaluator, calib = _setup()
    with pytest.raises(errors.DataError, match=r"\(4, 4, 3\).*\(8, 8, 3\)"):
        sn.SubmodelEvaluator(model, [calib[0][:, :4, :4]], evaluator.val_images,
                             evaluator.val_labels)


def test_touched_variables_are_the_shared_ones_and_the_chosen_candidates():
    model, _, _ = _setup()
    arch = (3, 2, 0, 3, 1, 4)
    paths = [v.path for v in model.variables]
    owners = model.candidate_variables()
    expected = [p not in owners or arch[owners[p][0]] == owners[p][1] for p in paths]
    assert 0 < sum(expected) < len(paths)
    vector = sn.touched_vector(model, paths, tf.constant(arch, tf.int32))
    np.testing.assert_array_equal(vector.numpy(), expected)
    mask = sn.touched_mask(model, paths, tf.constant(arch, tf.int32))
    assert [bool(mask[p]) for p in paths] == expected


def test_switch_and_stack_agree():
    x = tf.random.normal([4, 8, 8, 3])
    outs = []
    for selection in ("switch", "stack"):  # ("gather": gather_selection_test.py)
        tf.keras.utils.set_random_seed(3)
        model = nb201.build_supernet(3, channels=4, cells_per_stage=1, image_size=8,
                                     selection=selection)
        outs.append(model(x, training=True, arch=tf.constant([3, 2, 0, 3, 1, 4])).numpy())
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
