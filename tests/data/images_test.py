"""preprocess_images, load_image_file, class folders and mini-ImageNet (fake layouts)."""

import os

import fakes
import ml_collections
import numpy as np
import pytest
from PIL import Image

from tfmetanas import errors
from tfmetanas.data import (
    folders,
    get_task_source,
    load_image_file,
    miniimagenet,
    preprocess,
    preprocess_images,
)


@pytest.mark.parametrize("in_shape", [(105, 105, 1), (40, 30, 3), (8, 8, 1)])
@pytest.mark.parametrize("channels", [1, 3])
def test_preprocess_sizes_and_channels(in_shape, channels):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=(2,) + in_shape, dtype=np.uint8)
    spec = preprocess.make_spec(12, 10, channels=channels, invert=False)
    out = preprocess_images(raw, spec).numpy()
    assert out.shape == (2, 12, 10, channels) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out * 255, np.round(out * 255))  # uint8 levels
    single = preprocess_images(raw[0], spec).numpy()
    np.testing.assert_array_equal(single, out[0])


def test_preprocess_invert_and_identity():
    white = np.full((1, 28, 28, 1), 255, np.uint8)
    spec = preprocess.make_spec(28, invert=True)
    assert preprocess_images(white, spec).numpy().max() == 0.0
    image = np.random.default_rng(1).integers(0, 256, (1, 28, 28, 3), dtype=np.uint8)
    same = preprocess_images(image, preprocess.make_spec(28, channels=3))
    np.testing.assert_array_equal(preprocess.to_uint8(same.numpy()), image)
    gray = preprocess_images(image, preprocess.make_spec(28, channels=1)).numpy()
    expected = image.astype(np.float64) @ np.array([0.2989, 0.587, 0.114])
    np.testing.assert_allclose(gray[..., 0] * 255, expected, atol=1.0)


def test_stream_to_uint8_matches_the_whole_list_in_order(monkeypatch):
    rng = np.random.default_rng(2)
    shapes = [(40, 30, 3), (8, 8, 1), (40, 30, 3), (105, 105, 1), (8, 8, 1)] * 3
    raw = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in shapes]
    spec = preprocess.make_spec(12, 10, channels=3)
    whole = preprocess.preprocess_to_uint8(raw, spec)
    pulled = []

    def lazily():
        for image in raw:
            pulled.append(len(pulled))
            yield image

    calls, resize = [], preprocess.preprocess_to_uint8

    def recorded(images, spec):
        calls.append((len(pulled), len(images)))
        return resize(images, spec)

    monkeypatch.setattr(preprocess, "preprocess_to_uint8", recorded)
    streamed = preprocess.stream_to_uint8(lazily(), spec, chunk_size=4)
    np.testing.assert_array_equal(streamed, whole)
    # Four images decoded, four resized: never more than a chunk held at full size.
    assert calls == [(4, 4), (8, 4), (12, 4), (15, 3)]
    empty = preprocess.stream_to_uint8(iter([]), spec)
    assert empty.shape == (0, 12, 10, 3) and empty.dtype == np.uint8
    # With the count known, the chunks fill one preallocated array: same result.
    pulled.clear()
    calls.clear()

    def no_concatenate(*args, **kwargs):
        raise AssertionError("the chunks were concatenated")

    monkeypatch.setattr(np, "concatenate", no_concatenate)
    counted = preprocess.stream_to_uint8(lazily(), spec, chunk_size=4, count=len(raw))
    np.testing.assert_array_equal(counted, whole)
    assert calls == [(4, 4), (8, 4), (12, 4), (15, 3)]
    empty = preprocess.stream_to_uint8(iter([]), spec, count=0)
    assert empty.shape == (0, 12, 10, 3) and empty.dtype == np.uint8
    # Large images end a chunk early: each image counts its bytes plus its 12x10x3
    # float32 output (5,040, 1,504, 5,040, 12,465, 1,504 bytes, repeated), and a
    # chunk ends once it reaches 10,000 bytes or 4 images.
    pulled.clear()
    calls.clear()
    by_bytes = preprocess.stream_to_uint8(lazily(), spec, chunk_size=4, count=len(raw),
                                          chunk_bytes=10_000)
    np.testing.assert_array_equal(by_bytes, whole)
    assert calls == [(3, 3), (4, 1), (8, 4), (9, 1), (13, 4), (14, 1), (15, 1)]
    for wrong in (len(raw) - 1, len(raw) + 1):
        with pytest.raises(ValueError, match="count="):
            preprocess.stream_to_uint8(iter(raw), spec, chunk_size=4, count=wrong)


def test_load_image_file_modes_and_corrupt(tmp_path):
    Image.fromarray(np.zeros((5, 7), bool)).save(tmp_path / "bit.png")
    Image.fromarray(np.zeros((5, 7, 4), np.uint8)).save(tmp_path / "rgba.png")
    assert load_image_file(tmp_path / "bit.png").shape == (5, 7, 1)
    assert load_image_file(tmp_path / "rgba.png").shape == (5, 7, 3)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(errors.DataError, match="bad.png"):
        load_image_file(tmp_path / "bad.png")
    with pytest.raises(errors.DataError, match="missing.png"):
        load_image_file(tmp_path / "missing.png")


def make_class_folder(root, counts=(3, 4, 5), size=(20, 16)):
    rng = np.random.default_rng(0)
    for c, n in enumerate(counts):
        os.makedirs(root / f"class_{c}", exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, size=size + (3,), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")
    return root


def test_load_class_folder_matches_preprocess(tmp_path):
    make_class_folder(tmp_path)
    spec = preprocess.make_spec(8, channels=1, invert=True)
    images, labels, names = folders.load_class_folder(str(tmp_path), spec)
    assert images.shape == (12, 8, 8, 1) and images.dtype == np.float32
    np.testing.assert_array_equal(labels, [0] * 3 + [1] * 4 + [2] * 5)
    assert names == ["class_0", "class_1", "class_2"]
    raw = load_image_file(tmp_path / "class_1" / "2.png")
    np.testing.assert_array_equal(images[5], preprocess_images(raw, spec).numpy())


def test_folder_source_with_unequal_classes(tmp_path):
    make_class_folder(tmp_path)
    config = ml_collections.ConfigDict(
        {
            "source": "folder",
            "root": str(tmp_path),
            "ways": 3,
            "shots": 1,
            "queries": 2,
            "image_size": 8,
        }
    )
    source = get_task_source(config, "test", 0)
    task = source.task(0)
    assert task["support_x"].shape == (3, 8, 8, 1) and task["query_x"].shape == (6, 8, 8, 1)
    for i in range(20):  # every class yields K+Q distinct images despite unequal counts
        t = source.task(i)
        flat = np.concatenate([t["support_x"], t["query_x"]]).reshape(9, -1)
        assert len({row.tobytes() for row in flat}) == 9
    config.queries = 3
    with pytest.raises(errors.DataError, match="class_0"):
        get_task_source(config, "test", 0)


def test_folder_errors(tmp_path):
    spec = preprocess.make_spec(8)
    with pytest.raises(errors.DataError, match="does not exist"):
        folders.load_class_folder(str(tmp_path / "none"), spec)
    with pytest.raises(errors.DataError, match="no class sub-folders"):
        folders.load_class_folder(str(tmp_path), spec)
    (tmp_path / "cat").mkdir()
    with pytest.raises(errors.DataError, match="'cat'.*no images"):
        folders.load_class_folder(str(tmp_path), spec)
    (tmp_path / "cat" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(errors.DataError, match="x.jpg"):
        folders.load_class_folder(str(tmp_path), spec)


def mini_config(root, **overrides):
    config = ml_collections.ConfigDict(
        {
            "source": "miniimagenet",
            "root": str(root),
            "ways": 3,
            "shots": 1,
            "queries": 2,
            "image_size": 84,
        }
    )
    config.update(overrides)
    return config


def test_miniimagenet_csv_layout(tmp_path):
    fakes.make_miniimagenet_csv(tmp_path)
    train = get_task_source(mini_config(tmp_path, image_size=12), "train", 0)
    test = get_task_source(mini_config(tmp_path, image_size=12), "test", 0)
    assert train.num_classes == 6 and test.num_classes == 3
    assert train.input_shape == (12, 12, 3) and train.preprocess_spec["channels"] == 3
    assert set(train.class_names).isdisjoint(test.class_names)
    raw = load_image_file(tmp_path / "miniimagenet" / "images" / "n0000000100000000.png")
    spec = train.preprocess_spec
    images, classes = miniimagenet.load_miniimagenet_split(str(tmp_path), "train", 12)
    np.testing.assert_array_equal(
        preprocess.to_uint8(preprocess_images(raw, spec).numpy()), images[0, 0]
    )


def test_miniimagenet_pickles(tmp_path):
    fakes.make_miniimagenet_pickles(tmp_path, size=84)
    source = get_task_source(mini_config(tmp_path), "val", 0)
    assert source.num_classes == 3 and source.input_shape == (84, 84, 3)
    task = source.task(0)
    assert task["query_x"].shape == (6, 84, 84, 3)
    with pytest.raises(errors.DataError, match="3 classes but data.ways = 4"):
        get_task_source(mini_config(tmp_path, ways=4), "val", 0)
    with pytest.raises(errors.DataError, match="only 5"):
        get_task_source(mini_config(tmp_path, shots=3, queries=3), "val", 0)


def test_miniimagenet_class_array_is_a_view_when_rows_come_class_by_class():
    images = np.random.default_rng(3).integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    in_order = {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7], "c": [8, 9, 10, 11]}
    array, names = miniimagenet._to_class_array(images, in_order, "test")
    assert names == ["a", "b", "c"] and array.shape == (3, 4, 4, 4, 3)
    assert np.shares_memory(array, images)  # No copy of the split.
    np.testing.assert_array_equal(array, np.stack([images[v] for v in in_order.values()]))
    mixed = {"a": [5, 0, 9, 3], "b": [1, 11, 6, 2], "c": [4, 8, 7, 10]}
    array, _ = miniimagenet._to_class_array(images, mixed, "test")
    assert not np.shares_memory(array, images)
    np.testing.assert_array_equal(array, np.stack([images[v] for v in mixed.values()]))
    with pytest.raises(errors.DataError, match="different image counts"):
        miniimagenet._to_class_array(images, {"a": [0, 1, 2], "b": [3, 4, 5, 6, 7]}, "test")
    with pytest.raises(errors.DataError, match="non-integer indices"):
        miniimagenet._to_class_array(images, {"a": [0.0, 1.0], "b": [2.0, 3.0]}, "test")
    with pytest.raises(errors.DataError, match="no classes"):
        miniimagenet._to_class_array(images, {}, "test")


def test_miniimagenet_missing_and_corrupt(tmp_path):
    with pytest.raises(errors.DataError, match="mini-imagenet-cache-train.pkl"):
        get_task_source(mini_config(tmp_path), "train", 0)
    os.makedirs(tmp_path / "miniimagenet")
    (tmp_path / "miniimagenet" / "mini-imagenet-cache-test.pkl").write_bytes(b"garbage")
    with pytest.raises(errors.DataError, match="Cannot read mini-ImageNet pickle"):
        get_task_source(mini_config(tmp_path), "test", 0)
