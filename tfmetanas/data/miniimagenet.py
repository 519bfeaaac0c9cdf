"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle class split (ICLR 2017).

100 ImageNet classes x 600 images, 64/16/20 classes for train/val/test,
84x84 RGB. Two layouts are read; `data.root` (or $TFMETANAS_DATA_DIR) is a
folder holding `miniimagenet/` (or `mini-imagenet/`), or the folder itself:

- Ravi & Larochelle: `images/*.jpg` plus `train.csv`, `val.csv`, `test.csv`
  with header `filename,label`. Images are decoded with `load_image_file`,
  resized with `preprocess_images` (spec: image_size, 3 channels, no
  inversion) and cached as uint8 in $TFMETANAS_CACHE_DIR like Omniglot.
- the widely shared pickle cache `mini-imagenet-cache-{train,val,test}.pkl`:
  a dict with `image_data` (uint8 [N, 84, 84, 3]) and `class_dict`
  ({wnid: [indices]}). Pickles are preferred when both are present. The
  images are already 84x84 RGB, which is what `preprocess_images` returns for
  the default spec; other image sizes go through it.

Classes are ordered by sorted label (wnid). The full train split (38,400
images of 84x84x3 bytes) is about 0.8 GB in memory.
"""

import csv
import functools
import os
import pickle

import numpy as np

from tfmetanas import errors
from tfmetanas.data import base, preprocess

HELP = (
    "Get mini-ImageNet in the Ravi & Larochelle layout (images/ + train.csv, val.csv, "
    "test.csv; see https://github.com/twitter/meta-learning-lstm) or the pickle cache "
    "mini-imagenet-cache-{train,val,test}.pkl."
)
_CACHE_VERSION = 1


def find_miniimagenet_dir(root):
    """Returns root/miniimagenet, root/mini-imagenet or root itself."""
    for name in ("miniimagenet", "mini-imagenet", "mini_imagenet"):
        candidate = os.path.join(root, name)
        if os.path.isdir(candidate):
            return candidate
    return root


def _group(labels):
    """{label: [row indices]} with labels sorted."""
    groups = {}
    for i, label in enumerate(labels):
        groups.setdefault(str(label), []).append(i)
    return dict(sorted(groups.items()))


def _to_class_array(images, groups, where):
    """Stacks per-class images into [C, M, ...]; classes must have equal counts."""
    if not groups:
        raise errors.DataError(f"mini-ImageNet {where}: no classes. {HELP}")
    counts = {len(v) for v in groups.values()}
    if len(counts) != 1:
        smallest = min(groups, key=lambda k: len(groups[k]))
        raise errors.DataError(
            f"mini-ImageNet {where}: classes have different image counts {sorted(counts)} "
            f"(class {smallest!r} has {len(groups[smallest])}); every class should have "
            f"600 images. {HELP}"
        )
    indices = [np.asarray(v) for v in groups.values()]
    for name, rows in zip(groups, indices):
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise errors.DataError(
                f"mini-ImageNet {where}: class {name!r} lists images by non-integer indices "
                f"({rows.dtype}). {HELP}"
            )
    per_class = counts.pop()
    order = np.concatenate(indices)
    if np.array_equal(order, np.arange(len(images))):
        # Rows listed class by class (the usual files): a view, no copy.
        return images.reshape((len(indices), per_class) + images.shape[1:]), list(groups)
    out = np.empty((len(indices), per_class) + images.shape[1:], images.dtype)
    for i, rows in enumerate(indices):  # One class copied at a time, not all then stacked.
        out[i] = images[rows]
    return out, list(groups)


def _load_pickle(path, spec):
    try:
        with open(path, "rb") as f:
            # The pickle cache is a plain dict of numpy arrays written by the
            # community scripts; only load pickles you trust.
            data = pickle.load(f)
        images = np.asarray(data["image_data"], np.uint8)
        class_dict = data["class_dict"]
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise errors.DataError(
            f"Cannot read mini-ImageNet pickle {path}: {e!r}; expected a dict with "
            f"'image_data' (uint8 [N,84,84,3]) and 'class_dict'. {HELP}"
        ) from e
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise errors.DataError(
            f"mini-ImageNet pickle {path}: image_data has shape {images.shape}, expected [N,84,84,3]."
        )
    if images.shape[1:] != (spec["height"], spec["width"], spec["channels"]):
        images = preprocess.preprocess_to_uint8(images, spec)
    groups = {str(k): list(np.asarray(v).ravel()) for k, v in sorted(class_dict.items())}
    return _to_class_array(images, groups, path)


def _read_csv_split(folder, split, spec):
    csv_path = os.path.join(folder, f"{split}.csv")
    image_dir = os.path.join(folder, "images")
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise errors.DataError(f"Cannot read {csv_path}: {e}. {HELP}") from e
    if not rows or "filename" not in rows[0] or "label" not in rows[0]:
        raise errors.DataError(
            f"{csv_path} must have a header `filename,label` and at least one row. {HELP}"
        )
    images = preprocess.stream_to_uint8(
        (preprocess.load_image_file(os.path.join(image_dir, r["filename"])) for r in rows), spec,
        count=len(rows))
    return _to_class_array(images, _group([r["label"] for r in rows]), csv_path)


@functools.lru_cache(maxsize=3)
def _load_split_cached(folder, split, image_size, signature):
    spec = preprocess.make_spec(image_size, channels=3, invert=False)
    pkl = os.path.join(folder, f"mini-imagenet-cache-{split}.pkl")
    if os.path.isfile(pkl):
        return _load_pickle(pkl, spec)
    name = f"miniimagenet-v{_CACHE_VERSION}-{split}-{image_size}px-{base.cache_key(signature)}.npz"
    cached = base.load_npz_cache(name)
    if cached is not None:
        return cached["images"], [str(c) for c in cached["classes"]]
    images, classes = _read_csv_split(folder, split, spec)
    base.save_npz_cache(name, images=images, classes=np.array(classes))
    return images, classes


def load_miniimagenet_split(root, split, image_size=84):
    """Loads one mini-ImageNet split.

    Args:
      root: folder holding `miniimagenet/` or the mini-ImageNet folder itself.
      split: "train", "val" or "test".
      image_size: output height and width (84 is the standard).

    Returns:
      (uint8 images [classes, 600, S, S, 3], class labels (wnids), sorted).

    Raises:
      DataError: neither layout is found, or files are corrupt.
    """
    base.check_split(split)
    folder = find_miniimagenet_dir(root)
    pkl = os.path.join(folder, f"mini-imagenet-cache-{split}.pkl")
    csv_path = os.path.join(folder, f"{split}.csv")
    if os.path.isfile(pkl):
        signature = base.file_signature(pkl)
    elif os.path.isfile(csv_path) and os.path.isdir(os.path.join(folder, "images")):
        signature = (
            base.file_signature(csv_path),
            base.file_signature(os.path.join(folder, "images")),
        )
    else:
        raise errors.DataError(
            f"mini-ImageNet {split} split not found in {folder!r}: looked for {pkl} and for "
            f"{csv_path} with an images/ folder. {HELP}"
        )
    return _load_split_cached(folder, split, int(image_size), signature)


def build(data_config, split, seed):
    """Builds the mini-ImageNet `TaskSource` of one split."""
    base.check_split(split)
    root = base.resolve_root(base.cfg_get(data_config, "root", ""), "mini-ImageNet")
    image_size = int(base.cfg_get(data_config, "image_size", 84))
    images, classes = load_miniimagenet_split(root, split, image_size)
    return base.ImageTaskSource(
        images,
        split=split,
        seed=seed,
        ways=int(base.cfg_get(data_config, "ways", 5)),
        shots=int(base.cfg_get(data_config, "shots", 1)),
        queries=int(base.cfg_get(data_config, "queries", 15)),
        preprocess_spec=preprocess.make_spec(image_size, channels=3, invert=False),
        rotations=False,
        class_names=classes,
        name="mini-ImageNet",
    )
