"""Episode samplers: the `TaskSource` interface and the image classification sampler.

A `TaskSource` is one split of one data set seen as an infinite, indexed
sequence of few-shot tasks (episodes). Task i is a pure function of
(seed, split, i): it is drawn with stateless random ops whose key is
`fold_in([seed, crc32(split)], i)`, so

- eager calls, `tf.function` and `tf.data` give the same task;
- a run resumed at meta-step s calls `dataset(s * B, B)` and sees exactly the
  stream an uninterrupted run would have seen;
- evaluation uses the fixed tasks 0..n-1 of the val/test split.

N-way K-shot episodes follow Vinyals et al. 2016 (arXiv:1606.04080): N classes
are drawn without replacement, then K + Q distinct images per class; the N
classes get labels 0..N-1 in a random order per task.
"""

import os
import tempfile
import zlib

import numpy as np
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.data import preprocess

SPLITS = ("train", "val", "test")
# Philox is the counter-based generator on every device; fixing it (instead of
# "auto_select") keeps tasks identical on CPU and GPU.
_ALG = "philox"


def cfg_get(config, key, default=None):
    """Reads `config.key` with a default; works for ConfigDict, dicts and None.

    Engine configs may not set every optional data key, and an unset
    `config_dict.placeholder` reads as None; both give `default`.
    """
    if config is None:
        return default
    if isinstance(config, dict):
        value = config.get(key, default)
    else:
        try:
            value = getattr(config, key)
        except (AttributeError, KeyError):
            value = default
    return default if value is None else value


def check_split(split):
    """Raises ConfigError unless `split` is one of train/val/test."""
    if split not in SPLITS:
        raise errors.ConfigError(f"Unknown split {split!r}; valid splits are: {', '.join(SPLITS)}.")


def resolve_root(root, what):
    """Returns the data root: `root`, else $TFMETANAS_DATA_DIR.

    Args:
      root: data.root from the config ("" for unset).
      what: the data set's name, for the error message.
    """
    root = root or os.environ.get("TFMETANAS_DATA_DIR", "")
    if not root:
        raise errors.DataError(
            f"No data folder for {what}: data.root is empty and TFMETANAS_DATA_DIR is not "
            "set. Set one of them to the folder that holds the data set."
        )
    return os.path.expanduser(root)


def cache_dir():
    """The folder for preprocessed-array caches ($TFMETANAS_CACHE_DIR or ~/.cache/tfmetanas)."""
    path = os.environ.get("TFMETANAS_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "tfmetanas"
    )
    return path


def cache_key(*parts):
    """A short stable hex key for cache file names."""
    return format(zlib.crc32(repr(parts).encode()), "08x")


def file_signature(path):
    """(absolute path, mtime_ns, size) of a file or directory, for cache keys.

    For a directory the newest mtime and total size of the files below it are
    used, so adding or editing an image invalidates the cache.
    """
    path = os.path.abspath(path)
    if os.path.isfile(path):
        st = os.stat(path)
        return (path, st.st_mtime_ns, st.st_size)
    newest, total, count = 0, 0, 0
    for dirpath, _, filenames in os.walk(path):
        for f in filenames:
            st = os.stat(os.path.join(dirpath, f))
            newest, total, count = max(newest, st.st_mtime_ns), total + st.st_size, count + 1
    return (path, newest, total, count)


def load_npz_cache(name):
    """Returns the arrays of cache file `name` as a dict, or None if absent/unreadable."""
    path = os.path.join(cache_dir(), name)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError):
        return None  # A truncated or foreign file is rebuilt, not trusted.


def save_npz_cache(name, **arrays):
    """Writes arrays to cache file `name` atomically (temp file + rename).

    Concurrent runs may build the same cache; the rename makes the last
    complete file win and readers never see a partial file. Failures to write
    (read-only home, full disk) only cost speed, so they are ignored.
    """
    directory = cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, os.path.join(directory, name))
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    except OSError:
        pass


def validate_episode_shape(ways, shots, queries):
    """Checks that N, K and Q are positive integers (ConfigError otherwise)."""
    for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise errors.ConfigError(f"data.{name} must be a positive integer, got {value!r}.")


class TaskSource:
    """One split of one data set, as an indexed episode sampler.

    Attributes:
      kind: "classification" or "regression".
      ways, shots, queries: N, K (support per class) and Q (query per class).
      input_shape: shape of one input, e.g. (28, 28, 1), or (1,) for sinusoid.
      output_dim: model outputs (ways for classification, 1 for regression).
      num_classes: classes in this split (after rotations; 0 for regression).
      preprocess_spec: JSON-serialisable dict describing the inputs.
      split, seed: the split name and seed the tasks are drawn from.
    """

    kind = "classification"

    def __init__(self, split, seed, ways, shots, queries):
        check_split(split)
        validate_episode_shape(ways, shots, queries)
        self.split = split
        self.seed = int(seed)
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        self._base_key = tf.constant([self.seed, zlib.crc32(split.encode()) & 0x7FFFFFFF], tf.int64)

    def task_key(self, index):
        """The stateless RNG key of task `index` (a [2] int64 tensor)."""
        index = tf.cast(index, tf.int64)
        return tf.random.experimental.stateless_fold_in(self._base_key, index, alg=_ALG)

    def task(self, index):
        """Returns task `index` as a dict of support/query tensors."""
        raise NotImplementedError

    def dataset(self, start_index, meta_batch_size):
        """Infinite stream of meta-batches of tasks.

        Args:
          start_index: index of the first task (meta_step * meta_batch_size
            when resuming).
          meta_batch_size: tasks per batch, B.

        Returns:
          A prefetched `tf.data.Dataset` whose element t is the batched dict of
          tasks start_index + t*B ... start_index + t*B + B - 1.
        """
        ds = tf.data.Dataset.counter(start=int(start_index), dtype=tf.int64)
        ds = ds.map(self.task, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(int(meta_batch_size), drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(dataset_options())

    def eval_dataset(self, num_tasks, batch_size):
        """The fixed evaluation tasks 0..num_tasks-1, batched (last batch may be smaller).

        Args:
          num_tasks: number of tasks (600 by default in the engine's configs).
          batch_size: tasks per batch.

        Returns:
          A finite, prefetched `tf.data.Dataset` of batched task dicts.
        """
        ds = tf.data.Dataset.range(int(num_tasks))
        ds = ds.map(self.task, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE).with_options(
            dataset_options())

    def __repr__(self):
        return (
            f"{type(self).__name__}(split={self.split!r}, seed={self.seed}, "
            f"{self.ways}-way {self.shots}-shot {self.queries}-query, "
            f"num_classes={self.num_classes}, input_shape={self.input_shape})"
        )


def dataset_options():
    """tf.data options of the task streams: no static graph rewrites.

    tf.data's default rewrites serialise the pipeline's graph, which turns the
    image tensor the task function captures into a constant: a second copy of
    the whole image set for as long as the iterator lives (Omniglot with
    rotations: +68 MB; mini-ImageNet's train split: +800 MB). Sampling a task
    is a few small gathers, so the rewrites (map/batch fusion and the like)
    gain nothing here.
    """
    options = tf.data.Options()
    options.experimental_optimization.apply_default_optimizations = False
    return options


def add_rotations(images):
    """Appends 90/180/270-degree rotated copies as new classes.

    Args:
      images: uint8 [C, M, H, W, ch] with H == W.

    Returns:
      uint8 [4C, M, H, W, ch]; class c rotated by k*90 degrees is class c + k*C
      (the MAML / MAML++ Omniglot protocol, train split only).
    """
    return np.concatenate([np.rot90(images, k, axes=(2, 3)) for k in range(4)], axis=0)


def _turn_classes(images, turns):
    """Class ``i`` of `images` ``[n, m, H, W, ch]`` turned ``turns[i]`` quarters
    counter-clockwise (``np.rot90(x, turns[i], axes=(1, 2))`` per image)."""
    swap = [0, 1, 3, 2, 4]
    quarter = tf.transpose(tf.reverse(images, [3]), swap)  # As np.rot90: flip W, swap H/W.
    half = tf.reverse(images, [2, 3])
    three = tf.reverse(tf.transpose(images, swap), [3])
    every = tf.stack([images, quarter, half, three])  # [4, n, m, H, W, ch]
    index = tf.stack([tf.cast(turns, tf.int32), tf.range(tf.shape(images)[0])], axis=1)
    return tf.gather_nd(every, index)


class ImageTaskSource(TaskSource):
    """N-way K-shot classification episodes over in-memory uint8 images.

    Images are kept as one flat uint8 array with per-class offsets and
    counts, so classes may hold different numbers of images (class folders);
    the data sets here all have equal counts ([C, M, H, W, ch] arrays).
    """

    kind = "classification"

    def __init__(
        self,
        images,
        *,
        split,
        seed,
        ways,
        shots,
        queries,
        preprocess_spec,
        rotations=False,
        class_names=None,
        name="data set",
    ):
        """Builds the sampler.

        Args:
          images: uint8 [C, M, H, W, ch] (equal counts) or a list of C arrays
            [M_c, H, W, ch].
          split, seed: see `TaskSource`.
          ways, shots, queries: N, K, Q.
          preprocess_spec: spec dict the images were produced with.
          rotations: add 90/180/270-degree rotations as new classes (the
            caller passes True only for the train split).
          class_names: optional names of the C classes (before rotations).
          name: data set name used in error messages.

        Raises:
          DataError: fewer classes than ways, or a class with fewer than K + Q images.
        """
        super().__init__(split, seed, ways, shots, queries)
        if isinstance(images, np.ndarray):
            if images.ndim != 5:
                raise errors.DataError(
                    f"{name}: expected images [classes, per_class, H, W, C], got {images.shape}."
                )
            counts = np.full([images.shape[0]], images.shape[1], np.int64)
            flat = images.reshape((-1,) + images.shape[2:])
        else:
            counts = np.array([len(c) for c in images], np.int64)
            flat = np.concatenate(list(images), axis=0) if len(images) else np.zeros([0])
        # Rotated classes are not stored: a task rotates the images it gathers
        # (class c + k * C is class c turned k quarters, as `add_rotations`),
        # a quarter of the memory and no copies while loading.
        self._turns = 4 if rotations else 1
        if rotations and flat.ndim == 4 and flat.shape[1] != flat.shape[2]:
            raise errors.DataError(
                f"{name}: rotations need square images, got {flat.shape[1]}x{flat.shape[2]}."
            )
        self._base_classes = len(counts)
        offsets = np.tile(np.concatenate([[0], np.cumsum(counts)[:-1]]), self._turns)
        counts = np.tile(counts, self._turns)
        self.preprocess_spec = dict(preprocess_spec)
        self.num_classes = int(len(counts))
        self.class_names = None
        if class_names is not None:
            names = [str(n) for n in class_names]
            if rotations:
                names = names + [f"{n}@rot{k * 90}" for k in (1, 2, 3) for n in names]
            self.class_names = names
        self.output_dim = self.ways
        self.input_shape = tuple(int(d) for d in flat.shape[1:])
        self.images_per_class = counts

        # The checks a user can trigger with ways/shots/queries.
        if self.ways > self.num_classes:
            raise errors.DataError(
                f"{name} {split} split has {self.num_classes} classes but data.ways = "
                f"{self.ways}; lower data.ways to at most {self.num_classes} or use a "
                "larger split."
            )
        need = self.shots + self.queries
        smallest = int(counts.min())
        if need > smallest:
            who = ""
            if self.class_names is not None:
                who = f" (class {self.class_names[int(counts.argmin())]!r})"
            raise errors.DataError(
                f"{name} {split} split: a task needs shots + queries = {self.shots} + "
                f"{self.queries} = {need} images per class, but a class has only "
                f"{smallest}{who}. Lower data.shots or data.queries so that their sum "
                f"is at most {smallest}."
            )

        # A tensor captured by `task` is passed by reference to tf.function
        # and tf.data; it is not serialised into the graph. Made with an op:
        # `tf.constant` of a large NumPy array keeps two copies of its data
        # (a 60 MB image set: 123 MB resident against 65 MB this way).
        self._images = tf.identity(flat)
        self._equal_counts = bool(np.all(counts == counts[0]))
        self._max_count = int(counts.max())
        self._counts = tf.constant(counts, tf.int32)
        self._offsets = tf.constant(offsets, tf.int64)

    def class_images(self, c):
        """uint8 ``[n_c, H, W, C]``: every image of class `c` (rotated classes included)."""
        offset = int(self._offsets[c])
        images = self._images[offset:offset + int(self._counts[c])].numpy()
        return np.rot90(images, c // self._base_classes, axes=(1, 2))

    def class_arrays(self):
        """uint8 ``[classes, per_class, H, W, C]`` when every class has as many images."""
        if not self._equal_counts:
            raise errors.DataError(
                f"Classes have different image counts {sorted(set(self.images_per_class.tolist()))}; "
                "read them one by one with class_images(c)."
            )
        flat = self._images.numpy()
        base = flat.reshape((self._base_classes, self._max_count) + flat.shape[1:])
        return add_rotations(base) if self._turns > 1 else base

    def task(self, index):
        """Samples task `index`.

        Args:
          index: python int or scalar integer tensor.

        Returns:
          {"support_x": float32 [N*K, H, W, C] in [0, 1], "support_y": int32 [N*K],
           "query_x": float32 [N*Q, H, W, C], "query_y": int32 [N*Q]}; both sets
          are class-major (the K images of label 0 first).
        """
        n, k, q = self.ways, self.shots, self.queries
        class_key, image_key = tf.unstack(
            tf.random.experimental.stateless_split(self.task_key(index), 2, alg=_ALG)
        )
        # top_k of i.i.d. uniforms = N classes without replacement, in a random
        # order; the position in that order is the episode label.
        class_scores = tf.random.stateless_uniform([self.num_classes], class_key, alg=_ALG)
        classes = tf.math.top_k(class_scores, n, sorted=True).indices
        image_scores = tf.random.stateless_uniform([n, self._max_count], image_key, alg=_ALG)
        if not self._equal_counts:
            valid = (
                tf.range(self._max_count)[tf.newaxis] < tf.gather(self._counts, classes)[:, None]
            )
            image_scores = tf.where(valid, image_scores, -1.0)
        picks = tf.math.top_k(image_scores, k + q, sorted=True).indices
        flat_index = tf.gather(self._offsets, classes)[:, None] + tf.cast(picks, tf.int64)
        images = tf.gather(self._images, flat_index)
        if self._turns > 1:
            images = _turn_classes(images, classes // self._base_classes)
        images = preprocess.uint8_to_unit(images)
        shape = list(self.input_shape)
        labels = tf.range(n, dtype=tf.int32)
        return {
            "support_x": tf.reshape(images[:, :k], [n * k] + shape),
            "support_y": tf.repeat(labels, k),
            "query_x": tf.reshape(images[:, k:], [n * q] + shape),
            "query_y": tf.repeat(labels, q),
        }
