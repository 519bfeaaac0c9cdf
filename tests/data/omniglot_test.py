"""Omniglot loaders: fake trees (dir and zip), split schemes, errors, TFDS mock, real archives."""

import os

import fakes
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfmetanas import errors
from tfmetanas.data import get_task_source, omniglot, preprocess


def omniglot_config(root, **overrides):
    config = ml_collections.ConfigDict(
        {
            "source": "omniglot",
            "root": str(root),
            "split_scheme": "lake",
            "image_size": 14,
            "ways": 3,
            "shots": 1,
            "queries": 2,
            "rotations": True,
        }
    )
    config.update(overrides)
    return config


@pytest.mark.parametrize("zipped", [False, True])
def test_fake_tree_dir_and_zip(tmp_path, zipped):
    folder = fakes.make_omniglot_tree(tmp_path, zipped=zipped)
    images, alphabets, characters = omniglot.load_omniglot_set(folder, "images_background", 14)
    assert images.shape == (21, 6, 14, 14, 1) and images.dtype == np.uint8
    assert len(set(alphabets)) == 7 and characters[0] == "character01"
    # Strokes (black in the PNG) become bright after invert=True.
    assert images.mean() < 60 and images.max() > 100
    # The stored arrays are exactly preprocess_images of the raw files.
    raw = (
        preprocess.load_image_file(
            os.path.join(folder, "images_background/Alpha0/character01/0001_01.png")
        )
        if not zipped
        else None
    )
    if raw is not None:
        spec = preprocess.make_spec(14, channels=1, invert=True)
        np.testing.assert_array_equal(
            preprocess.preprocess_images(raw, spec).numpy(),
            preprocess.uint8_to_unit(images[0, 0]).numpy(),
        )
    # The dir-form and zip-form loaders agree.
    source = get_task_source(omniglot_config(tmp_path), "train", 0)
    assert source.preprocess_spec["invert"] is True


def test_dir_and_zip_give_same_arrays(tmp_path):
    a = omniglot.load_omniglot_set(
        fakes.make_omniglot_tree(tmp_path / "a"), "images_evaluation", 14
    )
    b = omniglot.load_omniglot_set(
        fakes.make_omniglot_tree(tmp_path / "b", zipped=True), "images_evaluation", 14
    )
    np.testing.assert_array_equal(a[0], b[0])


@pytest.mark.parametrize("zipped", [False, True])
def test_resizing_while_decoding_gives_the_same_arrays(tmp_path, zipped):
    path = os.path.join(fakes.make_omniglot_tree(tmp_path, zipped=zipped),
                        "images_evaluation" + (".zip" if zipped else ""))
    whole = omniglot._read_set(path, 14, chunk_size=10**6)
    chunked = omniglot._read_set(path, 14, chunk_size=4)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
    # Independently: every drawing decoded and resized on its own, in sorted order.
    drawings = {}
    for alphabet, character, fname, source, name in omniglot._list_members(path):
        drawings[(alphabet, character, fname)] = preprocess.decode_image(source, name)
    spec = preprocess.make_spec(14, channels=1, invert=True)
    expected = np.stack([preprocess.preprocess_to_uint8([drawings[k]], spec)[0]
                         for k in sorted(drawings)])
    np.testing.assert_array_equal(chunked[0].reshape(expected.shape), expected)
    characters = sorted({k[:2] for k in drawings})
    assert list(zip(chunked[1], chunked[2])) == characters


def test_lake_split_on_fake_tree(tmp_path):
    fakes.make_omniglot_tree(tmp_path)
    train = get_task_source(omniglot_config(tmp_path), "train", 0)
    val = get_task_source(omniglot_config(tmp_path), "val", 0)
    test = get_task_source(omniglot_config(tmp_path), "test", 0)
    # 7 background alphabets: position 5 (Alpha5) is held out for val.
    assert {n.split("/")[0] for n in val.class_names} == {"Alpha5"}
    assert train.num_classes == 6 * 3 * 4  # rotations in train only
    assert val.num_classes == 3 and test.num_classes == 9
    assert all(n.startswith("Eval") for n in test.class_names)


@pytest.mark.parametrize("scheme", ["vinyals", "mamlpp"])
def test_character_splits_disjoint(tmp_path, scheme):
    fakes.make_omniglot_tree(tmp_path)
    config = omniglot_config(tmp_path, split_scheme=scheme, rotations=False, ways=1)
    names = {s: set(get_task_source(config, s, 0).class_names) for s in ("train", "val", "test")}
    assert names["train"].isdisjoint(names["val"]) and names["train"].isdisjoint(names["test"])
    assert names["val"].isdisjoint(names["test"])
    assert sum(len(v) for v in names.values()) == 30


def test_missing_folder(tmp_path):
    with pytest.raises(errors.DataError) as info:
        get_task_source(omniglot_config(tmp_path / "nowhere"), "train", 0)
    message = str(info.value)
    assert "images_background" in message and "brendenlake/omniglot" in message


def test_no_root(monkeypatch):
    monkeypatch.delenv("TFMETANAS_DATA_DIR", raising=False)
    with pytest.raises(errors.DataError, match="TFMETANAS_DATA_DIR"):
        get_task_source(omniglot_config(""), "train", 0)


def test_corrupt_png_is_named(tmp_path):
    folder = fakes.make_omniglot_tree(tmp_path)
    bad = os.path.join(folder, "images_background/Alpha1/character02/0005_03.png")
    with open(bad, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(errors.DataError, match="0005_03.png"):
        omniglot.load_omniglot_set(folder, "images_background", 14)


def test_unknown_split_scheme(tmp_path):
    with pytest.raises(errors.ConfigError, match="'snell'.*lake, vinyals, mamlpp"):
        get_task_source(omniglot_config(tmp_path, split_scheme="snell"), "train", 0)


def test_cache_is_used(tmp_path):
    folder = fakes.make_omniglot_tree(tmp_path)
    first = omniglot._read_set(os.path.join(folder, "images_evaluation"), 14)[0]
    omniglot.load_omniglot_set(folder, "images_evaluation", 14)
    cached = [f for f in os.listdir(os.environ["TFMETANAS_CACHE_DIR"]) if f.endswith(".npz")]
    assert len(cached) == 1 and not any(f.endswith(".tmp") for f in cached)
    np.testing.assert_array_equal(
        omniglot.load_omniglot_set(folder, "images_evaluation", 14)[0], first
    )


def test_tfds_mock():
    def as_dataset(self, split, **kwargs):
        del self, kwargs
        rng = np.random.default_rng(0 if split == "train" else 1)
        labels = np.arange(12) if split == "train" else np.arange(12, 18)
        examples = []
        for label in labels:
            for _ in range(5):
                examples.append(
                    {
                        "image": rng.integers(0, 2, (105, 105, 3)).astype(np.uint8) * 255,
                        "label": label,
                        "alphabet": label // 3,
                        "alphabet_char_id": label % 3,
                    }
                )
        return tf.data.Dataset.from_tensor_slices(
            {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        )

    omniglot._tfds_load.cache_clear()
    config = ml_collections.ConfigDict(
        {
            "source": "omniglot_tfds",
            "split_scheme": "lake",
            "image_size": 14,
            "ways": 2,
            "shots": 1,
            "queries": 2,
            "rotations": False,
        }
    )
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        sources = {s: get_task_source(config, s, 0) for s in ("train", "val", "test")}
    omniglot._tfds_load.cache_clear()
    assert sources["test"].num_classes == 6
    assert sources["train"].num_classes + sources["val"].num_classes == 12
    assert sources["train"].task(0)["support_x"].shape == (2, 14, 14, 1)
    names = [set(s.class_names) for s in sources.values()]
    assert names[0].isdisjoint(names[1]) and names[0].isdisjoint(names[2])


# --- Real Omniglot ($TFMETANAS_DATA_DIR) --------------------------------------------


def test_real_omniglot_counts(omniglot_real):
    bg_images, bg_alphabets, _ = omniglot_real["background"]
    ev_images, ev_alphabets, _ = omniglot_real["evaluation"]
    assert bg_images.shape == (964, 20, 28, 28, 1)
    assert ev_images.shape == (659, 20, 28, 28, 1)
    assert len(set(bg_alphabets)) == 30 and len(set(ev_alphabets)) == 20
    # Strokes bright on a dark background, as glyphs.
    assert 10 < bg_images.mean() < 80


def test_real_lake_split(omniglot_real):
    bg_alphabets = set(omniglot_real["background"][1])
    config = omniglot_config(omniglot_real["root"], image_size=28, ways=5, rotations=False)
    train = get_task_source(config, "train", 0)
    val = get_task_source(config, "val", 0)
    test = get_task_source(config, "test", 0)
    train_alpha = {n.split("/")[0] for n in train.class_names}
    val_alpha = {n.split("/")[0] for n in val.class_names}
    assert train_alpha | val_alpha <= bg_alphabets and train_alpha.isdisjoint(val_alpha)
    assert len(val_alpha) == 5 and train.num_classes + val.num_classes == 964
    assert test.num_classes == 659


def test_real_vinyals_split(omniglot_real):
    config = omniglot_config(
        omniglot_real["root"], image_size=28, ways=20, split_scheme="vinyals", rotations=True
    )
    train, val, test = (get_task_source(config, s, 0) for s in ("train", "val", "test"))
    assert (train.num_classes, val.num_classes, test.num_classes) == (4 * 1100, 100, 423)
    base_train = {n.split("@")[0] for n in train.class_names}
    assert len(base_train) + val.num_classes == 1200
    assert base_train.isdisjoint(val.class_names) and base_train.isdisjoint(test.class_names)
    task = train.task(0)
    assert task["support_x"].shape == (20, 28, 28, 1)
    mamlpp = omniglot_config(
        omniglot_real["root"], image_size=28, split_scheme="mamlpp", rotations=False
    )
    counts = [get_task_source(mamlpp, s, 0).num_classes for s in ("train", "val", "test")]
    assert counts == [1150, 50, 423]


def test_a_corrupt_archive_member_is_a_data_error(tmp_path):
    import zipfile

    folder = fakes.make_omniglot_tree(tmp_path, zipped=True)
    path = os.path.join(folder, "images_background.zip")
    with zipfile.ZipFile(path) as z:
        info = [i for i in z.infolist() if i.filename.endswith(".png")][-1]
    # Flip bytes inside the last PNG's stored data: the archive opens, the member does not read.
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 30 + len(info.filename) + len(info.extra) + 8)
        chunk = f.read(16)
        f.seek(-16, 1)
        f.write(bytes(b ^ 0xFF for b in chunk))
    with pytest.raises(errors.DataError, match="corrupt.*Download it again"):
        omniglot.load_omniglot_set(folder, "images_background", 14)
