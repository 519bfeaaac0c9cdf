"""The one image preprocessing function used by training, loaders and export.

Every image source (Omniglot, mini-ImageNet, class folders, TFDS) turns raw
decoded files into the arrays it keeps in memory through `preprocess_images`,
then stores them as uint8 (`to_uint8`). Because the function ends by rounding
to the 256 uint8 levels, `preprocess_images(raw) == to_uint8(...) / 255`
holds bit for bit, so an export graph that applies `preprocess_images` to raw
files feeds the model exactly the values that training saw.

The preprocessing is described by a JSON-serialisable *spec* (a dict) that
every `TaskSource` exposes as `preprocess_spec`:

  height, width: output size in pixels.
  channels: 1 (grayscale) or 3 (RGB); inputs with the other count are
    converted (RGB -> gray with the ITU-R 601 luma weights of
    `tf.image.rgb_to_grayscale`; gray -> RGB by repeating the channel).
  invert: if true, the output is 1 - x. Omniglot and glyphs use strokes = 1.0
    on a 0.0 background; the official Omniglot PNGs are black strokes on
    white, so their spec has invert=True.
  resize: always "bilinear_antialias" (`tf.image.resize(method="bilinear",
    antialias=True)`): a triangle filter widened to the scale factor, which
    averages like "area" when shrinking (105 -> 28 for Omniglot) and
    interpolates smoothly when enlarging.
"""

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from tfmetanas import errors

RESIZE_METHOD = "bilinear_antialias"
# uint8 level -> float32 in [0, 1] by table lookup, not division: graph
# optimisers rewrite x / 255 as x * (1 / 255), which differs in the last bit,
# and training (eager or tf.function), loaders and export must agree exactly.
_UNIT_TABLE = np.arange(256, dtype=np.float32) / np.float32(255.0)


def uint8_to_unit(images):
    """Maps uint8 levels (or integer-valued floats 0..255) to float32 level / 255."""
    images = tf.convert_to_tensor(images)
    return tf.gather(tf.constant(_UNIT_TABLE), tf.cast(images, tf.int32))


def make_spec(height, width=None, channels=1, invert=False):
    """Builds a preprocessing spec dict.

    Args:
      height: output height in pixels.
      width: output width in pixels (defaults to `height`).
      channels: 1 or 3.
      invert: whether to map x -> 1 - x (dark strokes on light paper -> 1.0 strokes).

    Returns:
      A JSON-serialisable dict accepted by `preprocess_images`.
    """
    width = height if width is None else width
    if channels not in (1, 3):
        raise errors.ConfigError(
            f"Image channels must be 1 (grayscale) or 3 (RGB), got {channels!r}."
        )
    if int(height) < 1 or int(width) < 1:
        raise errors.ConfigError(
            f"Image size must be positive, got {height}x{width}; set data.image_size."
        )
    return {
        "height": int(height),
        "width": int(width),
        "channels": int(channels),
        "invert": bool(invert),
        "resize": RESIZE_METHOD,
    }


def _levels(images, spec):
    """Preprocesses to float32 uint8 levels (integers 0..255 as floats)."""
    images = tf.convert_to_tensor(images)
    single = images.shape.rank == 3
    if single:
        images = images[tf.newaxis]
    if images.shape.rank != 4:
        raise errors.DataError(
            f"preprocess_images expects [B,H,W,C] or [H,W,C] images, got shape {images.shape}."
        )
    in_channels = images.shape[-1]
    if in_channels not in (1, 3):
        raise errors.DataError(
            f"Images must have 1 or 3 channels, got {in_channels} (shape {images.shape}); "
            "decode them with load_image_file, which drops alpha channels."
        )
    x = tf.cast(images, tf.float32)
    channels = spec["channels"]
    if in_channels == 3 and channels == 1:
        x = tf.image.rgb_to_grayscale(x)
    elif in_channels == 1 and channels == 3:
        x = tf.tile(x, [1, 1, 1, 3])
    x = tf.image.resize(x, [spec["height"], spec["width"]], method="bilinear", antialias=True)
    # Rounding to uint8 levels here (not only in the loaders) is what makes the
    # export path bit-identical to the stored training arrays.
    x = tf.round(tf.clip_by_value(x, 0.0, 255.0))
    if spec.get("invert", False):
        x = 255.0 - x
    return x[0] if single else x


def preprocess_images(images, spec):
    """Converts raw uint8 images to the float32 model input described by `spec`.

    Pure TensorFlow ops, usable eagerly, in `tf.function` and in exported graphs.

    Args:
      images: uint8 (or any real dtype in 0..255) images, [B, H, W, C] or
        [H, W, C], any size, C = 1 or 3.
      spec: a dict from `make_spec` (or a TaskSource's `preprocess_spec`).

    Returns:
      float32 images [B, height, width, channels] (or [height, width,
      channels]) in [0, 1], quantised to multiples of 1/255.
    """
    return uint8_to_unit(_levels(images, spec))


def to_uint8(images):
    """Stores preprocessed float images in [0, 1] as uint8 (round(x * 255))."""
    return np.asarray(np.round(np.asarray(images, np.float32) * 255.0), np.uint8)


def preprocess_to_uint8(images, spec, chunk_size=2048):
    """Runs `preprocess_images` over a uint8 numpy batch in chunks; returns uint8.

    Loaders use this to build their in-memory arrays (chunks keep the float32
    intermediate small for 30k+ images).

    Args:
      images: uint8 array [B, H, W, C] (all the same size) or a list of
        [H, W, C] arrays of possibly different sizes.
      spec: preprocessing spec.
      chunk_size: images per TensorFlow call.

    Returns:
      uint8 array [B, height, width, channels].
    """
    out = np.zeros((len(images), spec["height"], spec["width"], spec["channels"]), np.uint8)
    if isinstance(images, np.ndarray):
        for start in range(0, len(images), chunk_size):
            chunk = images[start : start + chunk_size]
            out[start : start + len(chunk)] = to_uint8(preprocess_images(chunk, spec))
        return out
    # Mixed sizes: group same-shaped images so each group is one batched call.
    groups = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    for indices in groups.values():
        for start in range(0, len(indices), chunk_size):
            part = indices[start : start + chunk_size]
            batch = np.stack([images[i] for i in part])
            out[part] = to_uint8(preprocess_images(batch, spec))
    return out


def stream_to_uint8(images, spec, chunk_size=1024, count=None, chunk_bytes=16 << 20):
    """`preprocess_to_uint8` of an iterable of uint8 [H, W, C] arrays, in chunks.

    Loaders decode their files lazily into it: only `chunk_size` images are
    held at their original size at a time, never the whole data set (a few
    hundred MB for Omniglot's 105x105 drawings, gigabytes for photographs).

    Args:
      images: an iterable (e.g. a generator decoding files) of uint8
        [H, W, C] arrays, of possibly different sizes.
      spec: preprocessing spec.
      chunk_size: images decoded before each `preprocess_to_uint8` call.
      count: the number of images, if known: the result is allocated once
        and filled chunk by chunk (without it the chunks are concatenated at
        the end, holding the output twice for a moment).
      chunk_bytes: a chunk also ends once its decoded images and their float32
        preprocessed copies would reach this many bytes, so that large images
        go in smaller chunks (16 MB: about 150 images of 84x84 RGB; Omniglot's
        drawings stay at `chunk_size`).

    Returns:
      uint8 array [N, height, width, channels], in the iterable's order.

    Raises:
      ValueError: `images` yields more or fewer than `count` images.
    """
    out, filled, chunks = None, 0, []

    def add(pending):
        nonlocal out, filled
        small = preprocess_to_uint8(pending, spec)
        if count is None:
            chunks.append(small)
            return
        if filled + len(small) > count:
            raise ValueError(f"stream_to_uint8: more than count={count} images.")
        if out is None:
            out = np.empty((count,) + small.shape[1:], small.dtype)
        out[filled:filled + len(small)] = small
        filled += len(small)

    out_bytes = 4 * spec["height"] * spec["width"] * spec["channels"]  # float32, per image
    pending, pending_bytes = [], 0
    for image in images:
        pending.append(image)
        pending_bytes += image.nbytes + out_bytes
        if len(pending) >= chunk_size or pending_bytes >= chunk_bytes:
            add(pending)
            pending, pending_bytes = [], 0
    if pending or (not chunks and out is None):
        add(pending)
    if count is None:
        return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    if filled != count:
        raise ValueError(f"stream_to_uint8: {filled} images, expected count={count}.")
    return out


def decode_image(file_obj, name):
    """Decodes one image file to uint8 [H, W, 1] (gray) or [H, W, 3] (RGB).

    Args:
      file_obj: a path or a binary file object (e.g. from `zipfile.ZipFile.open`).
      name: the name used in error messages (path, or archive:member).

    Returns:
      uint8 numpy array [H, W, C], C = 1 for gray/1-bit images, 3 otherwise
      (alpha is dropped, palettes are expanded).
    """
    try:
        with Image.open(file_obj) as image:
            image.load()
            if image.mode in ("1", "L", "I;16", "I", "F", "LA"):
                # 1-bit Omniglot PNGs become 0/255 gray.
                image = image.convert("L")
                array = np.asarray(image, np.uint8)[..., None]
            else:
                array = np.asarray(image.convert("RGB"), np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise errors.DataError(
            f"Cannot read image {name}: {e}. The file is corrupt or not an image; "
            "replace or delete it (PNG and JPEG are supported)."
        ) from e
    return array


def load_image_file(path):
    """Reads one image file (PNG/JPEG/...) into a uint8 array.

    Args:
      path: file path.

    Returns:
      uint8 numpy array [H, W, C] with C = 1 (grayscale and 1-bit images) or 3.

    Raises:
      DataError: the file is missing, unreadable or corrupt (names the path).
    """
    return decode_image(str(path), str(path))
