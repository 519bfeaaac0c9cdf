"""Supervised many-class classification data for supernet training (SUMNAS Section 5).

Supernets are trained on ordinary supervised batches. The data layer
(`tfmetanas.data.get_task_source`) samples few-shot episodes; this adapter
takes the uint8 class arrays of one of its splits (Omniglot characters, the
embedded procedurally drawn ``glyphs``, ...) as ``[num_classes, n_per_class,
H, W, C]``, splits every class's images into train/val, and serves
deterministic batches: batch ``step`` is a pure function of (seed, step), so a
resumed run sees the same stream.
"""

import numpy as np

from tfmetanas import errors


def to_float(images):
    """float32 values of `images`: uint8 pixels scaled to [0, 1] (times 1 / 255),
    any other dtype converted as it is (float32 input is returned itself, not
    copied)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return (images * (1.0 / 255.0)).astype(np.float32)
    return images.astype(np.float32, copy=False)


class SupervisedArrays:
    """Train/val split of a ``[classes, per_class, H, W, C]`` uint8 array.

    Args:
      images: uint8 [num_classes, n_per_class, H, W, C].
      val_per_class: images of each class held out for validation.
      seed: batch sampling seed.

    Attributes:
      train_images, val_images: float32 [N, H, W, C] in [0, 1] (`to_float`).
        Both are kept in the input's dtype (uint8: a quarter of float32's
        memory) and converted per batch, or as a whole when the attribute is
        read; the values are the same either way.
      val_pixels: the validation images as kept (uint8 for uint8 input), for
        consumers that convert per batch (`supernet.SubmodelEvaluator`).
      train_labels, val_labels: int32 [N].
    """

    def __init__(self, images, val_per_class, seed=0):
        images = np.asarray(images)
        if images.ndim != 5:
            raise errors.DataError(f"Expected images [classes, per_class, H, W, C], got {images.shape}.")
        classes, per_class = images.shape[:2]
        if not 0 < val_per_class < per_class:
            raise errors.ConfigError(
                f"data.val_per_class = {val_per_class} must be in [1, {per_class - 1}]: each class "
                f"has {per_class} images and needs some for training and for validation."
            )
        n_train = per_class - val_per_class
        labels = np.repeat(np.arange(classes, dtype=np.int32)[:, None], per_class, axis=1)
        self.num_classes = int(classes)
        self.image_shape = tuple(int(d) for d in images.shape[2:])
        self._train = images[:, :n_train].reshape((-1,) + self.image_shape)
        self.val_pixels = images[:, n_train:].reshape((-1,) + self.image_shape)
        self.train_labels = labels[:, :n_train].reshape(-1)
        self.val_labels = labels[:, n_train:].reshape(-1)
        self.seed = int(seed)

    @property
    def train_images(self):
        return to_float(self._train)

    @property
    def val_images(self):
        return to_float(self.val_pixels)

    def batch(self, step, batch_size, stream=0):
        """Training batch `step`: ``(images, labels)``, sampled without replacement.

        `stream` separates independent batch streams (0: training, 1: BN calibration).
        """
        rng = np.random.default_rng([self.seed, int(stream), int(step)])
        index = rng.choice(len(self.train_labels), size=min(batch_size, len(self.train_labels)),
                           replace=False)
        return to_float(self._train[index]), self.train_labels[index]

    def calibration_batches(self, num_batches, batch_size):
        """Fixed training batches for BN recalibration (independent of `step`)."""
        return [self.batch(i, batch_size, stream=1)[0] for i in range(num_batches)]


def random_arrays(num_classes, per_class, image_size, channels, seed=0):
    """Random uint8 class arrays (tests, dry runs): ``[classes, per_class, H, W, C]``."""
    rng = np.random.default_rng(seed)
    # Class-dependent means make the task learnable a little.
    means = rng.integers(40, 215, size=(num_classes, 1, 1, 1, channels))
    noise = rng.normal(0, 40, size=(num_classes, per_class, image_size, image_size, channels))
    return np.clip(means + noise, 0, 255).astype(np.uint8)


def load_class_arrays(data_config, seed):
    """uint8 ``[classes, per_class, H, W, C]`` from the data layer (or random).

    ``data.source = "random"`` gives `random_arrays`; any other source is
    built with `tfmetanas.data.sources.get_task_source(data_config, "train",
    seed)` and its class arrays are read back. ``data.num_classes`` (if > 0)
    keeps the first classes only.
    """
    source_name = data_config.get("source", "glyphs")
    if source_name == "random":
        images = random_arrays(int(data_config.num_classes), int(data_config.per_class),
                               int(data_config.image_size), int(data_config.get("channels", 1)),
                               seed)
    else:
        from tfmetanas.data import sources  # the data layer; imported lazily

        config = dict(data_config.to_dict() if hasattr(data_config, "to_dict") else data_config)
        # The episode shape is irrelevant here; 1-way 1-shot passes every check.
        config.update(ways=1, shots=1, queries=1, rotations=False)
        source = sources.get_task_source(config, "train", seed)
        images = source.class_arrays()
        num_classes = int(data_config.get("num_classes", 0) or 0)
        if num_classes:
            if num_classes > len(images):
                raise errors.DataError(
                    f"data.num_classes = {num_classes} but {source_name} train has {len(images)}.")
            images = images[:num_classes]
    return images
