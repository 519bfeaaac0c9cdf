"""A folder with one sub-folder of images per class: support sets for export, custom data.

Layout: `root/<class name>/*.png|*.jpg|*.jpeg`; class names sorted
alphabetically become labels 0..n-1. As a `TaskSource` (source="folder"),
if every sub-folder of root is named train/val/test, `root/<split>` is used
for each split; otherwise all splits sample from the same classes of root (a
folder of support sets has no splits).

Images of any size and channel count are decoded with `load_image_file` and
go through `preprocess_images`. Defaults for the TaskSource: image_size 28,
`data.channels` 1, `data.invert` False (set invert=True for dark ink on light
paper, as for Omniglot-style training).
"""

import os

import numpy as np

from tfmetanas import errors
from tfmetanas.data import base, preprocess

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _class_files(path):
    """Returns [(class name, [image paths])] sorted by class name, validating the layout."""
    if not os.path.isdir(path):
        raise errors.DataError(
            f"Class folder {path!r} does not exist or is not a directory; expected "
            "<folder>/<class name>/*.png|jpg|jpeg."
        )
    names = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if not names:
        raise errors.DataError(
            f"Class folder {path!r} has no class sub-folders; put the images of each "
            "class into <folder>/<class name>/."
        )
    classes = []
    for name in names:
        class_dir = os.path.join(path, name)
        files = sorted(
            os.path.join(class_dir, f)
            for f in os.listdir(class_dir)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            raise errors.DataError(
                f"Class {name!r} ({class_dir}) has no images (*.png, *.jpg, *.jpeg); "
                "add images or remove the folder."
            )
        classes.append((name, files))
    return classes


def _load_uint8(path, spec):
    """Returns ([uint8 [n_c, H, W, C] per class], class names)."""
    classes = _class_files(path)
    images = preprocess.stream_to_uint8(
        (preprocess.load_image_file(f) for _, files in classes for f in files), spec,
        count=sum(len(files) for _, files in classes))
    out, start = [], 0
    for _, files in classes:
        out.append(images[start : start + len(files)])
        start += len(files)
    return out, [name for name, _ in classes]


def load_class_folder(path, spec):
    """Loads a class folder for export or evaluation.

    Args:
      path: folder holding `<class name>/*.png|jpg|jpeg`.
      spec: preprocessing spec (a TaskSource's `preprocess_spec`).

    Returns:
      (images float32 [n, H, W, C] from `preprocess_images`, labels int32 [n]
       (index of the class in sorted order), class names sorted).

    Raises:
      DataError: missing folder, no class folders, an empty class or an
        unreadable image (named in the message).
    """
    per_class, names = _load_uint8(path, spec)
    labels = np.concatenate([np.full(len(c), i, np.int32) for i, c in enumerate(per_class)])
    images = preprocess.uint8_to_unit(np.concatenate(per_class)).numpy()
    return images, labels, names


def build(data_config, split, seed):
    """Builds a `TaskSource` over a class folder (see the module docstring)."""
    base.check_split(split)
    root = base.resolve_root(base.cfg_get(data_config, "root", ""), "the class folder")
    if os.path.isdir(root):
        subdirs = {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))}
        if subdirs and subdirs <= set(base.SPLITS):
            root = os.path.join(root, split)
    image_size = int(base.cfg_get(data_config, "image_size", 28))
    spec = preprocess.make_spec(
        image_size,
        channels=int(base.cfg_get(data_config, "channels", 1)),
        invert=bool(base.cfg_get(data_config, "invert", False)),
    )
    per_class, names = _load_uint8(root, spec)
    return base.ImageTaskSource(
        per_class,
        split=split,
        seed=seed,
        ways=int(base.cfg_get(data_config, "ways", 5)),
        shots=int(base.cfg_get(data_config, "shots", 1)),
        queries=int(base.cfg_get(data_config, "queries", 15)),
        preprocess_spec=spec,
        rotations=False,
        class_names=names,
        name=f"class folder {root}",
    )
