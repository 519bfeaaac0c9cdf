"""Generators of tiny fake data sets (Omniglot trees, mini-ImageNet layouts) for tests."""

import os
import pickle
import zipfile

import numpy as np
from PIL import Image


def _stroke_image(rng, size=105):
    """A 1-bit image with black strokes on white, like an Omniglot PNG."""
    image = np.ones((size, size), bool)
    r0, c0 = rng.integers(10, size - 40, size=2)
    image[r0 : r0 + 30, c0 : c0 + 4] = False
    image[r0 : r0 + 4, c0 : c0 + 25] = False
    return Image.fromarray(image)  # mode "1" from a bool array


def make_omniglot_tree(root, alphabets=None, chars_per_alphabet=3, drawers=6, zipped=False, seed=0):
    """Writes images_background and images_evaluation in the official layout.

    Returns the omniglot folder (root / "omniglot").
    """
    rng = np.random.default_rng(seed)
    alphabets = alphabets or {
        "images_background": [f"Alpha{i}" for i in range(7)],
        "images_evaluation": [f"Eval{i}" for i in range(3)],
    }
    folder = os.path.join(root, "omniglot")
    os.makedirs(folder, exist_ok=True)
    char_id = 0
    for set_name, names in alphabets.items():
        files = {}
        for alphabet in names:
            for c in range(chars_per_alphabet):
                char_id += 1
                for d in range(drawers):
                    rel = (
                        f"{set_name}/{alphabet}/character{c + 1:02d}/{char_id:04d}_{d + 1:02d}.png"
                    )
                    files[rel] = _stroke_image(rng)
        if zipped:
            with zipfile.ZipFile(os.path.join(folder, set_name + ".zip"), "w") as z:
                for rel, image in files.items():
                    path = os.path.join(str(root), "tmp.png")
                    image.save(path)
                    z.write(path, rel)
                    os.remove(path)
        else:
            for rel, image in files.items():
                path = os.path.join(folder, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                image.save(path)
    return folder


def make_miniimagenet_csv(root, classes_per_split=(6, 3, 3), per_class=5, size=20, seed=0):
    """Writes images/ + train/val/test.csv (tiny RGB JPEG-free PNG images)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "miniimagenet")
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    wnid = 0
    for split, n in zip(("train", "val", "test"), classes_per_split):
        lines = ["filename,label"]
        for _ in range(n):
            wnid += 1
            for i in range(per_class):
                name = f"n{wnid:08d}{i:08d}.png"
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, "images", name))
                lines.append(f"{name},n{wnid:08d}")
        with open(os.path.join(folder, f"{split}.csv"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return folder


def make_miniimagenet_pickles(root, classes_per_split=(6, 3, 3), per_class=5, size=84, seed=0):
    """Writes mini-imagenet-cache-{split}.pkl files."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "miniimagenet")
    os.makedirs(folder, exist_ok=True)
    for split, n in zip(("train", "val", "test"), classes_per_split):
        images = rng.integers(0, 256, size=(n * per_class, size, size, 3), dtype=np.uint8)
        class_dict = {
            f"n{split}{c:04d}": list(range(c * per_class, (c + 1) * per_class)) for c in range(n)
        }
        with open(os.path.join(folder, f"mini-imagenet-cache-{split}.pkl"), "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)
    return folder
