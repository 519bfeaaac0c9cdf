"""Episode sampler contract: determinism, resumption, balance, shapes, errors (glyphs, sinusoid)."""

import tracemalloc

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.data import SOURCES, base, get_task_source, glyphs


def small_glyphs(**overrides):
    config = ml_collections.ConfigDict(
        {
            "source": "glyphs",
            "ways": 5,
            "shots": 2,
            "queries": 3,
            "image_size": 16,
            "rotations": False,
            "glyphs": {"num_classes": 40, "instances": 8, "train_classes": 24, "val_classes": 8},
        }
    )
    config.update(overrides)
    return config


def assert_tasks_equal(a, b):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_registry_names():
    assert SOURCES.names() == sorted(
        ["glyphs", "omniglot", "omniglot_tfds", "miniimagenet", "sinusoid", "folder"]
    )


def test_shapes_dtypes_ranges_and_balance():
    source = get_task_source(small_glyphs(), "train", seed=0)
    assert source.kind == "classification"
    assert source.input_shape == (16, 16, 1)
    assert source.output_dim == 5 and source.num_classes == 24
    assert source.preprocess_spec == {
        "height": 16,
        "width": 16,
        "channels": 1,
        "invert": False,
        "resize": "bilinear_antialias",
    }
    task = source.task(7)
    assert task["support_x"].shape == (10, 16, 16, 1) and task["support_x"].dtype == tf.float32
    assert task["query_x"].shape == (15, 16, 16, 1) and task["query_x"].dtype == tf.float32
    assert task["support_y"].dtype == tf.int32 and task["query_y"].dtype == tf.int32
    for x in (task["support_x"], task["query_x"]):
        assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
        assert float(tf.reduce_max(x)) > 0.5  # strokes are present
    np.testing.assert_array_equal(np.bincount(task["support_y"].numpy()), [2] * 5)
    np.testing.assert_array_equal(np.bincount(task["query_y"].numpy()), [3] * 5)


def test_support_and_query_images_are_distinct_and_from_the_labelled_class():
    source = get_task_source(small_glyphs(), "train", seed=3)
    task = source.task(11)
    sx, qx = task["support_x"].numpy(), task["query_x"].numpy()
    flat = np.concatenate([sx, qx]).reshape(25, -1)
    assert len({row.tobytes() for row in flat}) == 25  # K+Q distinct images per class
    # Nearest-neighbour consistency: a query is closer to its own class's
    # support than chance would give; at least check that labels are a
    # permutation across tasks (random label order per task).
    orders = set()
    for i in range(8):
        t = source.task(i)
        orders.add(tuple(t["support_y"].numpy()))
    assert len(orders) == 1  # class-major layout is fixed ...
    firsts = {source.task(i)["support_x"].numpy()[0].tobytes() for i in range(8)}
    assert len(firsts) > 1  # ... but the classes behind label 0 change


def test_task_is_pure_function_of_seed_split_index():
    source = get_task_source(small_glyphs(), "train", seed=1)
    again = get_task_source(small_glyphs(), "train", seed=1)
    assert_tasks_equal(source.task(5), again.task(5))
    assert_tasks_equal(source.task(5), source.task(tf.constant(5, tf.int64)))
    assert_tasks_equal(source.task(5), tf.function(source.task)(tf.constant(5)))
    other_seed = get_task_source(small_glyphs(), "train", seed=2).task(5)
    assert not np.array_equal(other_seed["support_x"], source.task(5)["support_x"])
    assert not np.array_equal(source.task(6)["support_x"], source.task(5)["support_x"])


def test_dataset_matches_eager_and_resumes():
    source = get_task_source(small_glyphs(), "train", seed=4)
    batch_size = 3
    stream = list(source.dataset(0, batch_size).take(4).as_numpy_iterator())
    for t, batch in enumerate(stream):
        assert batch["support_x"].shape == (3, 10, 16, 16, 1)
        for b in range(batch_size):
            eager = source.task(t * batch_size + b)
            for key in eager:
                np.testing.assert_array_equal(batch[key][b], eager[key].numpy())
    resumed = list(source.dataset(2 * batch_size, batch_size).take(2).as_numpy_iterator())
    for a, b in zip(stream[2:], resumed):
        assert_tasks_equal(a, b)


def test_eval_dataset_is_finite_and_fixed():
    source = get_task_source(small_glyphs(), "val", seed=0)
    batches = list(source.eval_dataset(7, 3).as_numpy_iterator())
    assert [b["support_y"].shape[0] for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(batches[2]["query_x"][0], source.task(6)["query_x"].numpy())


def test_splits_are_class_disjoint_and_rotations_only_in_train():
    config = small_glyphs(rotations=True)
    train = get_task_source(config, "train", 0)
    val = get_task_source(config, "val", 0)
    test = get_task_source(config, "test", 0)
    assert (train.num_classes, val.num_classes, test.num_classes) == (96, 8, 8)
    base_names = {n.split("@")[0] for n in train.class_names}
    assert base_names.isdisjoint(val.class_names) and base_names.isdisjoint(test.class_names)
    assert set(val.class_names).isdisjoint(test.class_names)
    images = glyphs._cached_glyphs(40, 8, 0, 16)
    # Pixel-level disjointness: no val image appears in train.
    train_bytes = {im.tobytes() for im in images[:24].reshape(-1, 16, 16, 1)}
    assert not any(im.tobytes() in train_bytes for im in images[24:32].reshape(-1, 16, 16, 1))


def test_glyph_generation_is_deterministic_and_seeded():
    a = glyphs.generate_glyphs(6, 3, seed=0, image_size=28)
    b = glyphs.generate_glyphs(6, 3, seed=0, image_size=28)
    c = glyphs.generate_glyphs(6, 3, seed=1, image_size=28)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.shape == (6, 3, 28, 28, 1) and a.dtype == np.uint8
    # Strokes, not noise or blank: a minority of pixels is inked.
    inked = (a > 128).mean(axis=(2, 3, 4))
    assert np.all(inked > 0.02) and np.all(inked < 0.5)
    # Instances of one class are more alike than instances of different classes.
    x = a.reshape(6, 3, -1).astype(np.float32)
    within = np.mean([np.abs(x[i, 0] - x[i, 1]).mean() for i in range(6)])
    between = np.mean([np.abs(x[i, 0] - x[(i + 1) % 6, 0]).mean() for i in range(6)])
    assert within < between


def test_glyph_generation_is_batch_independent_and_keeps_no_float_copy_of_the_set():
    # The same images whatever the render batch: the instance draws are made for
    # all images first.
    np.testing.assert_array_equal(
        glyphs.generate_glyphs(10, 4, seed=3, image_size=20),
        glyphs.generate_glyphs(10, 4, seed=3, image_size=20, batch=7),
    )

    # Each batch is stored as uint8 as soon as it is rendered: twice the images
    # add about their uint8 bytes to the peak, not a float32 array of the whole
    # set and the copies clipping and rounding make of it (16 bytes a pixel).
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is already on (PYTHONTRACEMALLOC): peaks would be the process's")

    def peak_and_size(classes):
        tracemalloc.start()
        tracemalloc.reset_peak()
        try:
            images = glyphs.generate_glyphs(classes, 20, seed=0, image_size=56, batch=256)
            return tracemalloc.get_traced_memory()[1], images.nbytes
        finally:
            tracemalloc.stop()

    (peak1, size1), (peak2, size2) = peak_and_size(100), peak_and_size(200)
    assert peak2 - peak1 < 2 * (size2 - size1), (peak1, peak2, size1, size2)


@pytest.mark.parametrize(
    "overrides, error, words",
    [
        ({"ways": 30}, errors.DataError, ["24 classes", "data.ways = 30"]),
        ({"shots": 5, "queries": 5}, errors.DataError, ["5 + 5 = 10", "only 8"]),
        ({"shots": 0}, errors.ConfigError, ["data.shots"]),
        ({"source": "imagenet21k"}, errors.ConfigError, ["imagenet21k", "glyphs", "sinusoid"]),
    ],
)
def test_bad_configs(overrides, error, words):
    with pytest.raises(error) as info:
        get_task_source(small_glyphs(**overrides), "train", 0)
    for word in words:
        assert word in str(info.value)


def test_unknown_split():
    with pytest.raises(errors.ConfigError, match="'dev'.*train, val, test"):
        get_task_source(small_glyphs(), "dev", 0)


def test_missing_optional_keys_get_defaults():
    source = get_task_source({"source": "sinusoid"}, "train", 0)
    assert (source.shots, source.queries) == (10, 10)
    assert base.cfg_get(ml_collections.ConfigDict({"a": 1}), "b", 7) == 7


def test_sinusoid_tasks():
    config = ml_collections.ConfigDict({"source": "sinusoid", "shots": 5, "queries": 7})
    source = get_task_source(config, "train", seed=0)
    assert source.kind == "regression" and source.input_shape == (1,) and source.output_dim == 1
    task = source.task(3)
    assert task["support_x"].shape == (5, 1) and task["query_y"].shape == (7, 1)
    assert task["support_y"].dtype == tf.float32
    x = np.concatenate([task["support_x"], task["query_x"]])[:, 0]
    y = np.concatenate([task["support_y"], task["query_y"]])[:, 0]
    assert np.all(np.abs(x) <= 5.0) and np.all(np.abs(y) <= 5.0)
    # y = A sin(x - phi) for one (A, phi) with A in [0.1, 5], phi in [0, pi]:
    # fit y = a sin x + b cos x by least squares; the residual is ~0.
    design = np.stack([np.sin(x), np.cos(x)], 1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(design @ coef, y, atol=1e-4)
    amplitude = np.hypot(*coef)
    assert 0.1 <= amplitude <= 5.0
    batch = next(iter(source.dataset(3, 2)))
    np.testing.assert_array_equal(batch["query_y"][0], task["query_y"])
    assert not np.array_equal(source.task(4)["support_y"], task["support_y"])


def test_class_arrays_hold_every_image_of_each_class():
    source = get_task_source(small_glyphs(), "train", seed=3)
    arrays = source.class_arrays()
    assert arrays.shape == (24, 8, 16, 16, 1) and arrays.dtype == np.uint8
    for c in (0, 23):
        np.testing.assert_array_equal(arrays[c], source.class_images(c))
    # A task's support images are images of the class arrays (as [0, 1] floats).
    task = source.task(0)
    known = {(a.astype(np.float32) / 255.0).tobytes() for a in arrays.reshape(-1, 16, 16, 1)}
    assert all(x.tobytes() in known for x in task["support_x"].numpy())


def test_supervised_arrays_come_from_the_data_layer():
    from tfmetanas.nas import supervised_data

    config = small_glyphs().to_dict()
    config["num_classes"] = 10
    images = supervised_data.load_class_arrays(config, seed=3)
    source = get_task_source(small_glyphs(), "train", seed=3)
    np.testing.assert_array_equal(images, source.class_arrays()[:10])
    with pytest.raises(errors.DataError, match="num_classes"):
        supervised_data.load_class_arrays({**config, "num_classes": 99}, seed=3)


def test_supervised_arrays_keep_uint8_images_and_serve_their_float_values():
    from tfmetanas.nas import supervised_data

    images = np.random.default_rng(0).integers(0, 256, (6, 5, 4, 4, 1), np.uint8)
    data = supervised_data.SupervisedArrays(images, val_per_class=2, seed=1)
    expected = images[:, :3].reshape(-1, 4, 4, 1).astype(np.float64) / 255.0
    assert data.train_images.dtype == np.float32
    np.testing.assert_array_equal(data.train_images, expected.astype(np.float32))
    np.testing.assert_array_equal(data.val_images,
                                  (images[:, 3:].reshape(-1, 4, 4, 1) / 255.0).astype(np.float32))
    # Batches are the float values of the sampled uint8 images, the same every time.
    for step in range(3):
        x, y = data.batch(step, 7)
        assert x.dtype == np.float32 and x.shape == (7, 4, 4, 1)
        rows = [np.flatnonzero((data.train_images == im).all(axis=(1, 2, 3)))[0] for im in x]
        np.testing.assert_array_equal(data.train_labels[rows], y)
        np.testing.assert_array_equal(data.batch(step, 7)[0], x)
    # Held at one byte a pixel: the float32 copies are made per batch, not kept.
    held = [a for a in vars(data).values() if isinstance(a, np.ndarray) and a.ndim == 4]
    assert all(a.dtype == np.uint8 for a in held)
    assert sum(a.nbytes for a in held) == images.size
    np.testing.assert_array_equal(data.val_pixels, images[:, 3:].reshape(-1, 4, 4, 1))


def test_task_streams_skip_the_rewrites_that_copy_the_images():
    """tf.data's default rewrites serialise the pipeline, turning the captured image
    tensor into a second copy of the image set (base.dataset_options); every task
    stream turns them off, the distributed one included."""
    from tfmetanas.experiment import distribute

    source = get_task_source(small_glyphs(), "train", seed=0)
    strategy = tf.distribute.get_strategy()
    streams = [source.dataset(0, 2), source.eval_dataset(3, 2)]
    for ds in streams:
        assert ds.options().experimental_optimization.apply_default_optimizations is False
    distributed = distribute.task_dataset(strategy, source, 0, 2)
    assert distributed.options().experimental_optimization.apply_default_optimizations is False
    # It still yields the single-device stream's tasks.
    assert_tasks_equal(next(iter(distributed)), next(iter(streams[0])))


@pytest.mark.parametrize("channels", [1, 3])
def test_rotated_classes_turned_on_gather_equal_stored_rotations(channels):
    """A source that turns rotated classes when a task gathers them gives the
    tasks of a source that stores `add_rotations`' copies (same draws, same
    pixels), and its class accessors return the stored copies."""
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 6, 6, channels), np.uint8)
    spec = {"height": 6, "width": 6, "channels": channels}
    kwargs = dict(split="train", seed=3, ways=7, shots=2, queries=3, preprocess_spec=spec)
    turned = base.ImageTaskSource(images, rotations=True, **kwargs)
    stored = base.ImageTaskSource(base.add_rotations(images), rotations=False, **kwargs)
    assert turned.num_classes == stored.num_classes == 12
    for index in range(6):
        assert_tasks_equal(turned.task(index), stored.task(index))
    expected = base.add_rotations(images)
    np.testing.assert_array_equal(turned.class_arrays(), expected)
    for c in range(12):
        np.testing.assert_array_equal(turned.class_images(c), expected[c])
    # Not vacuous: the turned classes differ from the classes they come from.
    assert not np.array_equal(expected[4], expected[1])
