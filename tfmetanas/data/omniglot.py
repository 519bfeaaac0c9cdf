"""Omniglot (Lake et al., Science 2015) in the official layout, and via TFDS.

Layout (as downloaded from https://github.com/brendenlake/omniglot/tree/master/python):
`images_background[.zip]` (30 alphabets, 964 characters),
`images_evaluation[.zip]` (20 alphabets, 659 characters), optionally
`images_background_small1/2[.zip]`; inside, `<Alphabet>/characterNN/<id>_<drawer>.png`
(105x105, 1-bit, black strokes on white, 20 drawers per character). Archives
are read directly with `zipfile`; nothing is extracted into the data folder.

`data.root` (or $TFMETANAS_DATA_DIR) is a folder that contains `omniglot/`,
or the Omniglot folder itself. Images go through `preprocess_images` with
spec (image_size, 1 channel, invert=True), so strokes are 1.0. The uint8
arrays are cached in `$TFMETANAS_CACHE_DIR` (default ~/.cache/tfmetanas),
keyed by archive path, mtime, size and image size.

Splits (`data.split_scheme`); characters are ordered as in the official ids
(background then evaluation, each sorted by alphabet and character folder):

- "lake": train/val = background alphabets, test = all evaluation alphabets
  (alphabet-level generalisation, Lake et al.). Val holds out the background
  alphabets at positions 5, 11, 17, 23, 29 of the sorted list (5 of 30:
  Balinese, Early_Aramaic, Inuktitut_(Canadian_Aboriginal_Syllabics), N_Ko,
  Tifinagh), so train has 25 alphabets; with fewer than 6 alphabets (the small
  sets) the last one is held out.
- "vinyals": character-level split over all 1623 characters (Vinyals et al.
  2016, arXiv:1606.04080), after a fixed shuffle
  (`numpy.random.RandomState(1).permutation`, as the MAML code shuffles with
  seed 1): the first 1200 characters are for training, of which the last 100
  are held out as val (train = 1100, val = 100, as in MAML), test = the
  remaining 423.
- "mamlpp": the same order, train/val/test = 1150/50/423 (MAML++, Antoniou
  et al. 2019, arXiv:1810.09502).

For other character counts (small sets, fake trees) the character splits
keep these proportions, with at least one class per split.

With `data.rotations`, the train split adds 90/180/270-degree rotations as new
classes (4x classes), as in MAML and MAML++. Optional
`data.omniglot.background` selects "images_background" (default) or
"images_background_small1"/"images_background_small2".
"""

import functools
import io
import os
import re
import zipfile
import zlib

import numpy as np

from tfmetanas import errors
from tfmetanas.data import base, preprocess

DOWNLOAD_URL = "https://github.com/brendenlake/omniglot/tree/master/python"
SPLIT_SCHEMES = ("lake", "vinyals", "mamlpp")
_CACHE_VERSION = 1
# (train + val, val, test) characters of the character-level splits on 1623.
_CHARACTER_SPLITS = {"vinyals": (1200, 100, 423), "mamlpp": (1200, 50, 423)}
_TOTAL = 1623
_PNG = re.compile(r"(?:^|/)([^/]+)/([^/]+)/([^/]+\.png)$", re.IGNORECASE)


def find_omniglot_dir(root):
    """Returns the Omniglot folder under `root` (root/omniglot or root itself)."""
    candidate = os.path.join(root, "omniglot")
    return candidate if os.path.isdir(candidate) else root


def _locate(folder, name):
    """Returns the directory or .zip of set `name` in `folder`, or raises DataError."""
    directory, archive = os.path.join(folder, name), os.path.join(folder, name + ".zip")
    if os.path.isdir(directory):
        return directory
    if os.path.isfile(archive):
        return archive
    raise errors.DataError(
        f"Omniglot {name!r} not found: looked for {directory}/ and {archive} "
        f"(data.root or TFMETANAS_DATA_DIR points to {folder!r}). Download "
        f"{name}.zip from {DOWNLOAD_URL} and put it (zipped or unzipped) into "
        "that folder or into an `omniglot/` folder inside it."
    )


def _list_members(path):
    """Yields (alphabet, character, filename, opener) for every PNG of a set."""
    if path.endswith(".zip"):
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise errors.DataError(
                f"Cannot open Omniglot archive {path}: {e}. Download it again from {DOWNLOAD_URL}."
            ) from e
        with archive:
            for member in archive.namelist():
                m = _PNG.search(member)
                if m:
                    try:
                        data = archive.read(member)
                    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
                        raise errors.DataError(
                            f"Omniglot archive {path} is corrupt: cannot read {member} ({e}). "
                            f"Download it again from {DOWNLOAD_URL}."
                        ) from e
                    yield m.group(1), m.group(2), m.group(3), io.BytesIO(data), f"{path}:{member}"
        return
    for alphabet in sorted(os.listdir(path)):
        alpha_dir = os.path.join(path, alphabet)
        if not os.path.isdir(alpha_dir):
            continue
        for character in sorted(os.listdir(alpha_dir)):
            char_dir = os.path.join(alpha_dir, character)
            if not os.path.isdir(char_dir):
                continue
            for fname in sorted(os.listdir(char_dir)):
                if fname.lower().endswith(".png"):
                    full = os.path.join(char_dir, fname)
                    yield alphabet, character, fname, full, full


def _read_set(path, image_size, chunk_size=1024):
    """Decodes and preprocesses one Omniglot set (no caching).

    Drawings are resized `chunk_size` at a time as they are decoded
    (`preprocess.stream_to_uint8`), so the set is never held at its original
    105x105: about 200 MB for the background set, the bulk of a first run's
    peak memory before.
    """
    spec = preprocess.make_spec(image_size, channels=1, invert=True)
    members = []

    def decoded():
        for alphabet, character, fname, source, name in _list_members(path):
            members.append(((alphabet, character), fname))
            yield preprocess.decode_image(source, name)

    small = preprocess.stream_to_uint8(decoded(), spec, chunk_size)
    by_character = {}
    for (key, fname), image in zip(members, small):
        by_character.setdefault(key, []).append((fname, image))
    if not by_character:
        raise errors.DataError(
            f"No Omniglot PNGs (<Alphabet>/characterNN/*.png) found in {path}. "
            f"Download the official archives from {DOWNLOAD_URL}."
        )
    keys = sorted(by_character)
    counts = {len(by_character[k]) for k in keys}
    if len(counts) != 1:
        fewest = min(keys, key=lambda k: len(by_character[k]))
        raise errors.DataError(
            f"Omniglot set {path}: characters have different numbers of drawings "
            f"({sorted(counts)}); e.g. {'/'.join(fewest)} has {len(by_character[fewest])}. "
            f"The archive is incomplete; download it again from {DOWNLOAD_URL}."
        )
    images = np.stack(
        [image for k in keys for _, image in sorted(by_character[k], key=lambda t: t[0])])
    images = images.reshape((len(keys), counts.pop()) + images.shape[1:])
    return images, np.array([k[0] for k in keys]), np.array([k[1] for k in keys])


def _load_set_cached(path, image_size):
    # Read from the on-disk cache every time, not memoised in memory: a copy
    # kept for the process's life would cost as much as the images themselves
    # (the sources keep their own tensor); reading the file takes ~0.1 s.
    name = f"omniglot-v{_CACHE_VERSION}-{os.path.basename(path)}-{image_size}px-" + (
        base.cache_key(base.file_signature(path), image_size) + ".npz"
    )
    cached = base.load_npz_cache(name)
    if cached is not None:
        return cached["images"], cached["alphabets"], cached["characters"]
    images, alphabets, characters = _read_set(path, image_size)
    base.save_npz_cache(name, images=images, alphabets=alphabets, characters=characters)
    return images, alphabets, characters


def load_omniglot_set(folder, name, image_size=28):
    """Loads one Omniglot set, using the on-disk cache.

    Args:
      folder: the Omniglot folder (holding `name` or `name.zip`).
      name: "images_background", "images_evaluation",
        "images_background_small1" or "images_background_small2".
      image_size: output height and width.

    Returns:
      (images uint8 [characters, drawers, S, S, 1] with strokes = 255,
       alphabet name per character, character folder name per character),
      characters sorted by (alphabet, character folder).

    Raises:
      DataError: the set is missing, corrupt or incomplete.
    """
    path = _locate(folder, name)
    return _load_set_cached(path, int(image_size))


def _proportional(n, scheme):
    """(train, val, test) character counts for n characters."""
    trainval, val, test = _CHARACTER_SPLITS[scheme]
    if n == _TOTAL:
        return trainval - val, val, test
    n_test = max(1, round(n * test / _TOTAL))
    n_val = max(1, round(n * val / _TOTAL))
    n_train = n - n_test - n_val
    if n_train < 1:
        raise errors.DataError(
            f"Omniglot has only {n} characters, too few for a {scheme} split; "
            "use the full images_background + images_evaluation sets."
        )
    return n_train, n_val, n_test


def lake_val_alphabets(alphabets):
    """The background alphabets held out for val in the "lake" split (see module doc)."""
    alphabets = sorted(set(alphabets))
    held = [a for i, a in enumerate(alphabets) if i % 6 == 5]
    return held or alphabets[-1:]


def split_characters(scheme, background_alphabets, num_evaluation, split):
    """Indices of the split's characters in background + evaluation order.

    Args:
      scheme: "lake", "vinyals" or "mamlpp".
      background_alphabets: alphabet name of every background character.
      num_evaluation: number of evaluation characters (they follow the
        background ones).
      split: "train", "val" or "test".

    Returns:
      int array of character indices.
    """
    num_background = len(background_alphabets)
    if scheme == "lake":
        if split == "test":
            return np.arange(num_background, num_background + num_evaluation)
        held = set(lake_val_alphabets(background_alphabets))
        in_val = np.array([a in held for a in background_alphabets], bool)
        return np.nonzero(in_val if split == "val" else ~in_val)[0]
    n = num_background + num_evaluation
    order = np.random.RandomState(1).permutation(n)
    n_train, n_val, _ = _proportional(n, scheme)
    return {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }[split]


def _check_scheme(scheme):
    if scheme not in SPLIT_SCHEMES:
        raise errors.ConfigError(
            f"Unknown Omniglot split_scheme {scheme!r}; valid schemes are: "
            f"{', '.join(SPLIT_SCHEMES)}."
        )


def _make_source(images, names, data_config, split, seed, image_size, name):
    return base.ImageTaskSource(
        images,
        split=split,
        seed=seed,
        ways=int(base.cfg_get(data_config, "ways", 5)),
        shots=int(base.cfg_get(data_config, "shots", 1)),
        queries=int(base.cfg_get(data_config, "queries", 15)),
        preprocess_spec=preprocess.make_spec(image_size, channels=1, invert=True),
        rotations=bool(base.cfg_get(data_config, "rotations", False)) and split == "train",
        class_names=names,
        name=name,
    )


def build(data_config, split, seed):
    """Builds the Omniglot `TaskSource` of one split from the official layout."""
    base.check_split(split)
    scheme = base.cfg_get(data_config, "split_scheme", "lake")
    _check_scheme(scheme)
    image_size = int(base.cfg_get(data_config, "image_size", 28))
    background = base.cfg_get(
        base.cfg_get(data_config, "omniglot", None), "background", "images_background"
    )
    folder = find_omniglot_dir(base.resolve_root(base.cfg_get(data_config, "root", ""), "Omniglot"))
    if scheme == "lake" and split == "test":
        # The test split needs only the evaluation set; skip reading the other.
        images, alphabets, characters = load_omniglot_set(folder, "images_evaluation", image_size)
        names = [f"{a}/{c}" for a, c in zip(alphabets, characters)]
        return _make_source(images, names, data_config, split, seed, image_size, "Omniglot")
    bg_images, bg_alphabets, bg_chars = load_omniglot_set(folder, background, image_size)
    if scheme == "lake":
        num_eval = 0
        all_images, all_alpha, all_chars = bg_images, bg_alphabets, bg_chars
    else:
        ev_images, ev_alphabets, ev_chars = load_omniglot_set(
            folder, "images_evaluation", image_size
        )
        num_eval = len(ev_images)
        all_images = np.concatenate([bg_images, ev_images])
        all_alpha = np.concatenate([bg_alphabets, ev_alphabets])
        all_chars = np.concatenate([bg_chars, ev_chars])
    index = split_characters(scheme, list(bg_alphabets), num_eval, split)
    names = [f"{all_alpha[i]}/{all_chars[i]}" for i in index]
    return _make_source(all_images[index], names, data_config, split, seed, image_size, "Omniglot")


# --- TFDS ---------------------------------------------------------------------------


def _tfds_examples_to_sets(examples, spec):
    """Groups TFDS examples into (images [C, M, S, S, 1], alphabet ids, is_background)."""
    by_label = {}
    for image, label, alphabet, background in examples:
        by_label.setdefault(int(label), (int(alphabet), bool(background), []))[2].append(image)
    labels = sorted(by_label)
    counts = {len(by_label[k][2]) for k in labels}
    per_class = min(counts)
    raw = [img for k in labels for img in by_label[k][2][:per_class]]
    images = preprocess.preprocess_to_uint8(np.stack(raw), spec)
    images = images.reshape((len(labels), per_class) + images.shape[1:])
    alphabets = np.array([by_label[k][0] for k in labels])
    background = np.array([by_label[k][1] for k in labels])
    return images, alphabets, background


@functools.lru_cache(maxsize=2)
def _tfds_load(image_size, data_dir):
    import tensorflow_datasets as tfds

    spec = preprocess.make_spec(image_size, channels=1, invert=True)
    examples = []
    # TFDS "train" = images_background, "test" = images_evaluation; its splits
    # are not few-shot class splits, so classes are re-split below.
    for tfds_split, background in (("train", True), ("test", False)):
        ds = tfds.load("omniglot", split=tfds_split, data_dir=data_dir or None)
        for ex in tfds.as_numpy(ds):
            examples.append((ex["image"], ex["label"], ex["alphabet"], background))
    if not examples:
        raise errors.DataError("TFDS omniglot returned no examples.")
    return _tfds_examples_to_sets(examples, spec)


def build_tfds(data_config, split, seed):
    """Builds an Omniglot `TaskSource` from `tfds.load("omniglot")` (needs internet once).

    TFDS labels are ordered like the official character ids, so the split
    schemes are the same as for the official layout; alphabets are TFDS's
    alphabet ids. `data.root`, when set, is passed as the TFDS data_dir.
    """
    base.check_split(split)
    scheme = base.cfg_get(data_config, "split_scheme", "lake")
    _check_scheme(scheme)
    image_size = int(base.cfg_get(data_config, "image_size", 28))
    images, alphabets, background = _tfds_load(image_size, base.cfg_get(data_config, "root", ""))
    bg_index = np.nonzero(background)[0]
    ev_index = np.nonzero(~background)[0]
    order = np.concatenate([bg_index, ev_index])
    bg_alphabets = [f"alphabet{a:02d}" for a in alphabets[bg_index]]
    if scheme == "lake":
        local = split_characters("lake", bg_alphabets, len(ev_index), split)
    else:
        local = split_characters(scheme, bg_alphabets, len(ev_index), split)
    index = order[local]
    names = [f"label{i}" for i in index]
    return _make_source(
        images[index], names, data_config, split, seed, image_size, "Omniglot (TFDS)"
    )
