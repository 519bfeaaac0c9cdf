"""Serving adapted task networks: adapt to a support folder, build, export.

DESIGN.md, "Serving adapted task networks". `adapt_and_build` restores the
meta-model of a workdir, reads a folder of support images with the run's own
preprocessing, adapts with the run's meta-test procedure
(`Algorithm.test_adapt`) and builds a *discrete* Keras model: only what the
adapted network computes, with the adapted weights and batch normalisation in
inference form. `AdaptedModel.export` writes it as a SavedModel whose
``serving_default`` signature takes raw uint8 images of any size and applies
the training preprocessing inside the graph.

Which BN statistics the served model uses follows the run's ``inner.bn_mode``:

- ``running``: the running statistics after adaptation, of the last inner
  step's row when the model keeps per-step statistics (MAML++ BNRS) -- exactly
  what the run's meta-test normalises the query set with;
- ``transductive``: the run normalised each query *batch* with its own
  statistics; a served model sees one image at a time, so batch statistics are
  impossible. The served model uses the statistics of the *support set* at the
  adapted weights (every BN layer's batch mean and variance in a training-mode
  forward pass of the support set). On the support set it reproduces the
  transductive forward pass exactly.

The discrete model is built from plain Keras layers (conv4, ResNet-12, MLP), so
the exported graph needs nothing from tfmetanas. METANAS search networks are
hard-pruned with `tfmetanas.nas.darts.discrete_from_search`; other model
classes plug in through `register_discrete_builder`.
"""

import dataclasses
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfmetanas import compiled, errors
from tfmetanas.data import folders
from tfmetanas.data import preprocess as preprocess_lib
from tfmetanas.experiment import trainer
from tfmetanas.experiment import workdir as workdir_lib
from tfmetanas.models import backbones

FORMAT_VERSION = 1
LABELS_FILE = "labels.txt"
ADAPTATION_FILE = "adaptation.json"
OUTPUT_NAMES = ("logits", "probabilities", "class_ids")

# Mirrors `backbones._ACTIVATIONS` with plain Keras layers (same slopes).
_KERAS_ACTIVATIONS = {
    "relu": lambda name: keras.layers.ReLU(name=name),
    "leaky_relu": lambda name: keras.layers.LeakyReLU(negative_slope=0.01, name=name),
}


# ---------------------------------------------------------------------------
# Support folder.


def read_support_folder(support_dir):
    """Reads the files of a support folder, checking its layout.

    Args:
      support_dir: ``<support_dir>/<class name>/*.png|jpg|jpeg``; class names
        in sorted order become labels 0..n-1.

    Returns:
      ``(class names, [paths per class], [decoded uint8 [H, W, C] images in order])``.

    Raises:
      ExportError: no such folder, no class sub-folders, a class without images,
        or unreadable image files (all of them named).
    """
    if not os.path.isdir(support_dir):
        raise errors.ExportError(
            f"Support folder {support_dir!r} does not exist or is not a directory; expected "
            "<support_dir>/<class name>/*.png|jpg|jpeg."
        )
    # Hidden folders (.ipynb_checkpoints, .git) are not classes.
    names = sorted(
        d
        for d in os.listdir(support_dir)
        if not d.startswith(".") and os.path.isdir(os.path.join(support_dir, d))
    )
    if not names:
        raise errors.ExportError(
            f"Support folder {support_dir!r} has no class sub-folders; put the images of each "
            "class into <support_dir>/<class name>/."
        )
    files, empty = [], []
    for name in names:
        class_dir = os.path.join(support_dir, name)
        found = sorted(
            os.path.join(class_dir, f)
            for f in os.listdir(class_dir)
            if f.lower().endswith(folders.IMAGE_EXTENSIONS) and not f.startswith(".")
        )
        if not found:
            empty.append(class_dir)
        files.append(found)
    if empty:
        raise errors.ExportError(
            f"Empty class folder(s) without images (*.png, *.jpg, *.jpeg): {', '.join(empty)}. "
            "Add at least one image per class or remove the folder."
        )
    raw, unreadable = [], []
    for class_files in files:
        for path in class_files:
            try:
                raw.append(preprocess_lib.load_image_file(path))
            except errors.DataError as e:
                unreadable.append(f"{path} ({e.__cause__ or e})")
    if unreadable:
        raise errors.ExportError(
            f"{len(unreadable)} unreadable image file(s) in {support_dir}: "
            + "; ".join(unreadable)
            + ". Replace or delete them (PNG and JPEG are supported)."
        )
    return names, files, raw


def load_support_folder(support_dir, spec):
    """Reads a support folder with the run's preprocessing.

    Args:
      support_dir: see `read_support_folder`.
      spec: the preprocessing spec of the run's data source.

    Returns:
      ``(images float32 [n, H, W, C], labels int32 [n], class names, image paths)``.

    Raises:
      ExportError: see `read_support_folder`.
    """
    names, files, raw = read_support_folder(support_dir)
    return _preprocess_support(names, files, raw, spec)


def _preprocess_support(names, files, raw, spec):
    # One image at a time: files may differ in size. These are the ops the
    # serving graph applies to a batch.
    images = np.stack([preprocess_lib.preprocess_images(x, spec).numpy() for x in raw])
    labels = np.concatenate([np.full(len(f), i, np.int32) for i, f in enumerate(files)])
    return images, labels, names, [p for f in files for p in f]


# ---------------------------------------------------------------------------
# Discrete models.


@dataclasses.dataclass
class BNChoice:
    """Which statistics the inference-form BN layers get.

    Attributes:
      mode: "running" or "transductive" (the run's ``inner.bn_mode``).
      support_x: the preprocessed support images (transductive calibration).
    """

    mode: str
    support_x: np.ndarray


@dataclasses.dataclass
class DiscreteModel:
    """What a discrete builder returns.

    Attributes:
      keras_model: the built discrete Keras model (float images -> logits).
      genotype: the hard-pruned `Genotype` (METANAS) or None.
    """

    keras_model: keras.Model
    genotype: object = None


_BUILDERS = []


def register_discrete_builder(model_class, builder):
    """Registers how to turn an adapted `model_class` into a discrete model.

    The extension point for new backbones and search spaces.

    Args:
      model_class: a Keras model class of `tfmetanas.models.zoo`.
      builder: ``builder(model, values, call_kwargs, bn, input_shape) -> DiscreteModel`` with
        `values` ``{path: tensor}`` holding every adapted trainable value and the
        BN state after adaptation, `call_kwargs` the model-call arguments of the
        run's last meta-test inner step (``step`` for per-step BN, ``temperature``
        for DARTS), `bn` a `BNChoice` and `input_shape` the shape of one
        preprocessed image.
    """
    _BUILDERS.insert(0, (model_class, builder))


def build_discrete(model, values, call_kwargs, bn, input_shape):
    """Builds the discrete model of an adapted `model` (see `register_discrete_builder`).

    Returns:
      A `DiscreteModel`.

    Raises:
      ExportError: no builder for this model class.
    """
    for model_class, builder in _BUILDERS:
        if isinstance(model, model_class):
            return builder(model, values, call_kwargs, bn, tuple(input_shape))
    known = ", ".join(c.__name__ for c, _ in _BUILDERS)
    raise errors.ExportError(
        f"Export does not know how to build a discrete {type(model).__name__}; known: {known}. "
        "Register one with tfmetanas.experiment.export.register_discrete_builder."
    )


def _value(values, variable):
    return np.asarray(values.get(variable.path, variable.value))


def _row(table, step):
    """The row of a per-step table that the model's call uses at `step`."""
    return table[min(int(step), table.shape[0] - 1)]


def _plain_bn(norm, values, step, name):
    """A Keras BatchNormalization in inference form from a built `MetaBatchNorm`."""
    bn = keras.layers.BatchNormalization(
        epsilon=norm.epsilon, center=norm.center, scale=norm.scale, name=name
    )
    weights = []
    if norm.scale:
        weights.append(_row(_value(values, norm.gamma), step))
    if norm.center:
        weights.append(_row(_value(values, norm.beta), step))
    weights += [
        _row(_value(values, norm.moving_mean), step),
        _row(_value(values, norm.moving_variance), step),
    ]
    return bn, weights


def _plain_conv(conv, values, name):
    layer = keras.layers.Conv2D(
        conv.filters,
        conv.kernel_size,
        strides=conv.strides,
        padding=conv.padding,
        use_bias=conv.use_bias,
        name=name,
    )
    weights = [_value(values, conv.kernel)] + ([_value(values, conv.bias)] if conv.use_bias else [])
    return layer, weights


def _plain_dense(dense, values, name, activation=None):
    layer = keras.layers.Dense(
        dense.units, use_bias=dense.use_bias, activation=activation, name=name
    )
    weights = [_value(values, dense.kernel)] + (
        [_value(values, dense.bias)] if dense.use_bias else []
    )
    return layer, weights


def _finish(inputs, outputs, name, assignments, bn):
    """Builds the functional model, assigns weights, calibrates BN if transductive."""
    model = keras.Model(inputs, outputs, name=name)
    for layer, weights in assignments:
        layer.set_weights(weights)
    if bn.mode == "transductive":
        calibrate_batch_norm(model, bn.support_x)
    return DiscreteModel(model)


def calibrate_batch_norm(model, support_x):
    """Sets every BatchNormalization of a functional model to support-set statistics.

    Layer by layer in graph order, each BN gets the batch mean and (biased)
    variance of its input on the support set, with the BN layers before it
    already calibrated. Its output on the support set then equals the
    training-mode (batch statistics) forward pass, the transductive BN of the
    run, while single images are normalised with fixed statistics.

    Args:
      model: a functional Keras model.
      support_x: float32 support images.
    """
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        probe = keras.Model(model.input, layer.input)
        x = tf.convert_to_tensor(probe(support_x, training=False))
        axes = list(range(len(x.shape) - 1))
        # The same moments as `MetaBatchNorm` in training mode.
        mean = tf.reduce_mean(x, axes)
        variance = tf.reduce_mean(tf.square(x - mean), axes)
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)


def _conv4(model, values, call_kwargs, bn, input_shape):
    step = int(call_kwargs.get("step", 0))
    activation = next(k for k, f in backbones._ACTIVATIONS.items() if f is model.activation)
    inputs = keras.Input(input_shape, name="images")
    x, assignments = inputs, []
    for i, (conv, norm) in enumerate(zip(model.convs, model.norms)):
        layer, weights = _plain_conv(conv, values, f"conv{i}")
        assignments.append((layer, weights))
        x = layer(x)
        layer, weights = _plain_bn(norm, values, step, f"bn{i}")
        assignments.append((layer, weights))
        x = _KERAS_ACTIVATIONS[activation](f"act{i}")(layer(x))
        if model.downsample == "max_pool":
            x = keras.layers.MaxPooling2D(2, 2, padding="valid", name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    head, weights = _plain_dense(model.head, values, "head")
    assignments.append((head, weights))
    return _finish(inputs, head(x), "conv4_adapted", assignments, bn)


def _resnet12(model, values, call_kwargs, bn, input_shape):
    step = int(call_kwargs.get("step", 0))
    inputs = keras.Input(input_shape, name="images")
    x, assignments = inputs, []

    def add(pair):
        assignments.append(pair)
        return pair[0]

    for b, block in enumerate(model.blocks):
        prefix = f"block{b}"
        h = x
        for i, (conv, norm) in enumerate(zip(block.convs, block.norms)):
            h = add(_plain_conv(conv, values, f"{prefix}_conv{i}"))(h)
            h = add(_plain_bn(norm, values, step, f"{prefix}_bn{i}"))(h)
            if i < 2:
                h = keras.layers.LeakyReLU(negative_slope=block.slope, name=f"{prefix}_act{i}")(h)
        r = add(_plain_conv(block.shortcut, values, f"{prefix}_shortcut"))(x)
        r = add(_plain_bn(block.shortcut_norm, values, step, f"{prefix}_shortcut_bn"))(r)
        h = keras.layers.Add(name=f"{prefix}_add")([h, r])
        h = keras.layers.LeakyReLU(negative_slope=block.slope, name=f"{prefix}_out")(h)
        x = keras.layers.MaxPooling2D(2, 2, padding="valid", name=f"{prefix}_pool")(h)
    if model.pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    logits = add(_plain_dense(model.head, values, "head"))(x)
    return _finish(inputs, logits, "resnet12_adapted", assignments, bn)


def _mlp(model, values, call_kwargs, bn, input_shape):
    del call_kwargs
    inputs = keras.Input(input_shape, name="inputs")
    x, assignments = inputs, []
    for i, dense in enumerate(model.hidden):
        layer, weights = _plain_dense(dense, values, f"dense{i}", activation="relu")
        assignments.append((layer, weights))
        x = layer(x)
    layer, weights = _plain_dense(model.out, values, "out")
    assignments.append((layer, weights))
    return _finish(inputs, layer(x), "mlp_adapted", assignments, bn)


def _darts(model, values, call_kwargs, bn, input_shape):
    """METANAS: hard-prunes the adapted search network (Elsken et al., Sec. 3.3)."""
    from tfmetanas.nas import darts, ops

    # The genotype is derived at the temperature of the run's last meta-test
    # step and pruned at the search network's hard-pruning threshold: the
    # network meta-test evaluation scores (`SearchNetwork(hard_prune=True)`).
    temperature = float(np.asarray(call_kwargs.get("temperature", 1.0)))
    threshold = model.hard_threshold
    discrete, genotype = darts.discrete_from_search(
        model,
        params=values,
        state=values,
        temperature=temperature,
        threshold=threshold,
        input_shape=(None, *input_shape),
    )
    if bn.mode == "transductive":
        # A training-mode pass with momentum 0 sets every moving statistic to
        # the support batch's (m * old + (1 - m) * batch is exactly batch).
        norms = [layer for layer in discrete._flatten_layers() if isinstance(layer, ops.BatchNorm)]
        saved = [n.momentum for n in norms]
        try:
            for n in norms:
                n.momentum = 0.0
            discrete(tf.convert_to_tensor(bn.support_x), training=True)
        finally:
            for n, m in zip(norms, saved):
                n.momentum = m
    return DiscreteModel(discrete, genotype)


register_discrete_builder(backbones.MLP, _mlp)
register_discrete_builder(backbones.Conv4, _conv4)
if hasattr(backbones, "ResNet12"):
    register_discrete_builder(backbones.ResNet12, _resnet12)


def _register_darts():
    try:
        from tfmetanas.nas import darts
    except ImportError:  # The NAS package is optional for fixed-backbone exports.
        return
    if hasattr(darts, "discrete_from_search"):
        register_discrete_builder(darts.SearchNetwork, _darts)


_register_darts()


# ---------------------------------------------------------------------------
# Serving.


class ServingModule(tf.Module):
    """The exported object: the discrete model's variables and the signature.

    Only `tf.Variable`s, the serving `tf.function` and the labels asset are
    tracked, never the Keras model object (the function reaches it through a
    closure), so the SavedModel holds plain TensorFlow and reloads without
    tfmetanas.

    Args:
      keras_model: the discrete model (float images -> logits).
      spec: the run's preprocessing spec.
    """

    def __init__(self, keras_model, spec):
        super().__init__(name="adapted_task_network")
        self.model_variables = [v.value for v in keras_model.weights]
        self.serve = compiled.function(
            _serving_fn(keras_model, dict(spec)),
            input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name="images")],
        )


def _serving_fn(keras_model, spec):
    def preprocess(images):
        channels = tf.shape(images)[-1]
        check = tf.debugging.Assert(
            tf.logical_or(tf.equal(channels, 1), tf.equal(channels, 3)),
            ["images must have 1 (gray) or 3 (RGB) channels, got", channels],
        )
        with tf.control_dependencies([check]):
            images = tf.identity(images)

        # The training preprocessing needs the channel count statically: one
        # branch per supported count.
        def branch(c):
            return lambda: preprocess_lib.preprocess_images(
                tf.ensure_shape(images, [None, None, None, c]), spec
            )

        x = tf.cond(tf.equal(channels, 1), branch(1), branch(3))
        return tf.ensure_shape(x, [None, spec["height"], spec["width"], spec["channels"]])

    def serve(images):
        logits = keras_model(preprocess(images), training=False)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "class_ids": tf.argmax(logits, axis=-1, output_type=tf.int64),
        }

    return serve


def count_variables(keras_model):
    """Number of scalars held by the model's variables (weights and BN statistics)."""
    return int(sum(int(np.prod(v.shape)) for v in keras_model.weights))


def check_export_dir(export_dir, overwrite=False, workdir=None):
    """Refuses an existing export directory (unless `overwrite`) and unsafe targets.

    Raises:
      ExportError: `export_dir` exists and not `overwrite`, or it is (or holds)
        the workdir, which overwriting would destroy.
    """
    if not str(export_dir or "").strip():
        # os.path.abspath("") is the current directory, which --overwrite would replace.
        raise errors.ExportError("--export_dir is empty; name the SavedModel directory to create.")
    out = os.path.abspath(export_dir)
    if workdir is not None:
        wd = os.path.abspath(workdir)
        if out == wd or wd.startswith(out + os.sep):
            raise errors.ExportError(
                f"--export_dir={export_dir} is (or contains) the workdir {workdir}; "
                "choose another directory."
            )
    if os.path.lexists(out) and not overwrite:
        raise errors.ExportError(
            f"Export directory {export_dir} already exists; choose a new --export_dir or pass "
            "--overwrite (overwrite=True) to replace it."
        )


@dataclasses.dataclass
class AdaptedModel:
    """A meta-model adapted to one support set, as a discrete Keras model.

    Attributes:
      keras_model: the discrete model: float32 preprocessed images -> logits.
      class_names: class names in label order.
      preprocess_spec: the run's preprocessing (applied by `predict` and the export).
      param_count: scalars in the discrete model's variables (kernels, biases,
        BN scale/shift and statistics): what the SavedModel stores.
      trainable_param_count: the same without BN statistics.
      genotype: the hard-pruned `Genotype` (METANAS) or None.
      info: the provenance written to ``adaptation.json``.
    """

    keras_model: keras.Model
    class_names: list
    preprocess_spec: dict
    param_count: int
    trainable_param_count: int
    genotype: object = None
    info: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self._module = ServingModule(self.keras_model, self.preprocess_spec)

    def predict(self, images):
        """Runs the serving computation in memory.

        Args:
          images: uint8 [batch, height, width, 1 or 3], any size (or one
            [height, width, channels] image).

        Returns:
          dict of numpy arrays: ``logits`` [batch, N], ``probabilities`` [batch, N],
          ``class_ids`` int64 [batch] (index into `class_names`).
        """
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise errors.ExportError(f"predict takes uint8 images, got dtype {images.dtype}.")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise errors.ExportError(
                f"predict takes images [batch, height, width, 1|3], got shape {images.shape}."
            )
        return {k: v.numpy() for k, v in self._module.serve(tf.constant(images)).items()}

    def export(self, export_dir, overwrite=False):
        """Writes the SavedModel, ``assets/labels.txt`` and ``adaptation.json``.

        Everything is written to a temporary directory beside `export_dir` and
        renamed at the end: a failed export leaves no half-written directory.

        Args:
          export_dir: the SavedModel directory to create.
          overwrite: replace an existing `export_dir`.

        Returns:
          The absolute path of the export.

        Raises:
          ExportError: `export_dir` exists and not `overwrite`.
        """
        check_export_dir(export_dir, overwrite, self.info.get("source_workdir"))
        out = os.path.abspath(export_dir)
        parent = os.path.dirname(out)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.tmp-")
        try:
            with tempfile.TemporaryDirectory() as scratch:
                labels_path = os.path.join(scratch, LABELS_FILE)
                with open(labels_path, "w", encoding="utf-8") as f:
                    f.write("".join(f"{name}\n" for name in self.class_names))
                # Tracked as an asset: the SavedModel copies it to assets/labels.txt
                # and TF Serving / the loaded object know its path.
                self._module.labels_file = tf.saved_model.Asset(labels_path)
                signature = self._module.serve.get_concrete_function()
                tf.saved_model.save(self._module, tmp, signatures={"serving_default": signature})
            workdir_lib.write_json_atomic(os.path.join(tmp, ADAPTATION_FILE), self.info)
            if os.path.lexists(out):
                # Replace: move the old export aside first so a crash between the
                # renames leaves one complete export, never a mix.
                old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.old-")
                os.rename(out, os.path.join(old, "export"))
                os.rename(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out


# ---------------------------------------------------------------------------
# The procedure.


def adapt_and_build(workdir, support_dir, checkpoint="best", steps=None, data_root=None):
    """Adapts a trained meta-model to a support folder and builds the discrete model.

    Args:
      workdir: a workdir written by `tfmetanas-train`.
      support_dir: ``<support_dir>/<class name>/*.png|jpg|jpeg``.
      checkpoint: "best" (falls back to the latest if no best exists) or "latest".
      steps: inner steps (default: the run's ``inner.eval_steps``).
      data_root: overrides the run's ``data.root`` (the data source is built
        to obtain the training preprocessing).

    Returns:
      An `AdaptedModel`.

    Raises:
      CheckpointError: not a workdir, no checkpoint, or an incompatible one.
      ExportError: a bad support folder, or a class count the N-way head cannot serve.
      ConfigError: steps < 1.
    """
    config = workdir_lib.load_config(workdir)
    workdir_lib.find_checkpoint(workdir, checkpoint)  # Before any data is loaded.
    # The support folder is read before the (slow) model build: its mistakes
    # are the likeliest ones.
    names, files, raw = read_support_folder(support_dir)
    with config.unlocked():
        if data_root is not None:
            config.data.root = data_root
        if steps is not None:
            if int(steps) < 1:
                raise errors.ConfigError(f"--steps must be >= 1, got {steps}.")
            config.inner.eval_steps = int(steps)

    exp = trainer.Experiment(config, splits=("train",))
    if exp.kind != "classification":
        raise errors.ExportError(
            f"Export serves image classifiers; the run in {workdir} is a {exp.kind} run "
            f"(data.source={config.data.get('source')!r})."
        )
    source = exp.sources["train"]
    spec = dict(source.preprocess_spec)
    path = workdir_lib.restore(workdir, exp.checkpoint, checkpoint)

    support_x, support_y, class_names, files = _preprocess_support(names, files, raw, spec)
    if len(class_names) != exp.output_dim:
        raise errors.ExportError(
            f"The model's head is {exp.output_dim}-way (data.ways={exp.output_dim} in "
            f"{workdir}/config.json), but {support_dir} has {len(class_names)} class "
            f"folder(s) ({', '.join(class_names)}): give exactly {exp.output_dim} classes."
        )

    # The meta-test procedure of the run; the query set is only needed by the
    # API, so it is the support set again.
    task = {
        "support_x": tf.constant(support_x),
        "support_y": tf.constant(support_y),
        "query_x": tf.constant(support_x),
        "query_y": tf.constant(support_y),
    }
    algorithm = exp.algorithm
    result = algorithm.test_adapt(task)
    num_steps = int(algorithm.eval_steps)
    values = dict(exp.fmodel.params())
    values.update(result.params)
    values.update(result.state)
    # The query set of the meta-test is evaluated with the call arguments of
    # the last inner step (per-step BN row, DARTS temperature).
    call_kwargs = algorithm.learner.forward_kwargs(num_steps - 1, num_steps)
    bn_mode = algorithm.learner.bn_mode
    discrete = build_discrete(
        exp.model, values, call_kwargs, BNChoice(bn_mode, support_x), exp.input_shape
    )

    keras_model = discrete.keras_model
    trainable = int(sum(int(np.prod(v.shape)) for v in keras_model.trainable_weights))
    with_bn = bool(keras_model.non_trainable_weights)
    support_accuracy = float(
        np.mean(np.argmax(keras_model(support_x, training=False), -1) == support_y)
    )
    info = {
        "format_version": FORMAT_VERSION,
        "source_workdir": os.path.abspath(workdir),
        "checkpoint": checkpoint,
        "checkpoint_path": os.path.abspath(path),
        "meta_step": int(exp.step.numpy()),
        "model": str(config.model.get("name", "conv4")),
        "algorithm": str(config.meta.get("algorithm", "maml")),
        "support_dir": os.path.abspath(support_dir),
        "support_size": int(len(support_y)),
        "support_per_class": {n: int(np.sum(support_y == i)) for i, n in enumerate(class_names)},
        "support_files": [os.path.relpath(f, support_dir) for f in files],
        "support_accuracy": support_accuracy,
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "steps": num_steps,
        "bn": _bn_info(bn_mode, call_kwargs, with_bn),
        "preprocess_spec": spec,
        "param_count": count_variables(keras_model),
        "trainable_param_count": trainable,
        "genotype": discrete.genotype.to_dict() if discrete.genotype is not None else None,
        "signature": {
            "name": "serving_default",
            "inputs": {"images": "uint8 [batch, height, width, 1|3], any batch and image size"},
            "outputs": {
                "logits": "float32 [batch, num_classes]",
                "probabilities": "float32 [batch, num_classes] (softmax of logits)",
                "class_ids": "int64 [batch] (line index in assets/labels.txt)",
            },
        },
        "tensorflow_version": tf.__version__,
    }
    return AdaptedModel(
        keras_model=keras_model,
        class_names=list(class_names),
        preprocess_spec=spec,
        param_count=info["param_count"],
        trainable_param_count=trainable,
        genotype=discrete.genotype,
        info=info,
    )


def _bn_info(bn_mode, call_kwargs, with_bn):
    if not with_bn:
        return {"mode": bn_mode, "statistics": "none (the model has no batch normalisation)"}
    step = call_kwargs.get("step")
    out = {"mode": bn_mode, "inner_step": None if step is None else int(step)}
    if bn_mode == "running":
        out["statistics"] = (
            "running statistics after adaptation (the per-step row of the last inner step "
            "when the model keeps per-step statistics), as the run's meta-test used them"
        )
    else:
        out["statistics"] = (
            "support-set statistics at the adapted weights: the run normalised each query "
            "batch with its own statistics (transductive), which a served model that sees "
            "one image at a time cannot do; every BN layer holds the mean and variance of "
            "its input over the support set (a training-mode pass of the support set)"
        )
    return out


def export_workdir(
    workdir, support_dir, export_dir, checkpoint="best", steps=None, overwrite=False, data_root=None
):
    """Adapts the run in `workdir` to `support_dir` and exports it to `export_dir`.

    What `tfmetanas-export` calls. The export directory is checked first, so a
    refused export costs nothing.

    Args:
      workdir, support_dir, checkpoint, steps, data_root: see `adapt_and_build`.
      export_dir: the SavedModel directory to create.
      overwrite: replace an existing `export_dir`.

    Returns:
      The `AdaptedModel` (its ``info`` is ``adaptation.json``).
    """
    check_export_dir(export_dir, overwrite, workdir)
    adapted = adapt_and_build(
        workdir, support_dir, checkpoint=checkpoint, steps=steps, data_root=data_root
    )
    adapted.info["export_dir"] = os.path.abspath(export_dir)
    adapted.export(export_dir, overwrite=overwrite)
    return adapted


def format_result(adapted):
    """One-line summary for the CLI."""
    info = adapted.info
    return (
        f"exported {info['num_classes']}-way {info['model']} adapted on {info['support_size']} "
        f"images ({info['steps']} steps, BN {info['bn']['mode']}, {info['param_count']} "
        f"parameters, support accuracy {100 * info['support_accuracy']:.1f}%) to "
        f"{info.get('export_dir')}"
    )
