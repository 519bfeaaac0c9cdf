"""Weight-sharing supernets: building blocks, path sampling, BN recalibration, evaluation.

Implements the supernet machinery shared by SPOS (Guo et al., ECCV 2020,
arXiv:1904.00420, Section 3), FairNAS (Chu et al., ICCV 2021,
arXiv:1907.01845, Section 3.2 "strict fairness") and SUMNAS (Ha et al., ICLR
2022, Section 3 and Appendix A): a supernet is a Keras model whose
``call(x, training, arch)`` runs ONE sub-model, selected by an int32 tensor
``arch`` of per-layer (per-edge) choices, so one traced graph serves every
sub-model.

Design:
- Every block is a *functional* Keras layer: ``forward(x, training) ->
  (y, updates)`` where ``updates`` lists ``(variable, new_value)`` for BN
  statistics. The model's ``call`` assigns them once at the end, which works
  both eagerly and inside ``stateless_call`` (`FunctionalModel`).
- `Choice` selects one candidate. ``selection="switch"`` runs only the chosen
  candidate inside `tf.switch_case`; the other candidates get zero gradients
  and their BN statistics are passed through unchanged. ``selection="stack"``
  runs every candidate and gathers the chosen output (BN updates of the others
  are masked out). ``selection="gather"`` is for candidates of one structure
  that differ only in sizes (MobileNet's kernel sizes and expansion ratios):
  it gathers the chosen candidate's weights and runs one copy of the block on
  them, so the graph holds one block per layer instead of one per candidate
  (docs/performance.md, "Session 20"). ``switch`` is the default.
- With a Python tuple as ``arch`` the graph holds the chosen ops only (a
  standalone sub-model); flops/params tests use this as an independent count.
- BN recalibration (SPOS Section 3.4; SUMNAS Section 4): reset the running
  statistics, then average batch statistics of the chosen sub-model over a few
  training batches (cumulative moving average), before evaluation.
"""

import keras
import numpy as np
import tensorflow as tf

from tfmetanas import compiled, errors
from tfmetanas.models import params as params_lib
from tfmetanas.models.layers import depthwise_conv, pointwise_conv
from tfmetanas.nas import supervised_data

SELECTIONS = ("switch", "stack", "gather")


# --------------------------------------------------------------------------
# Functional building blocks.
# --------------------------------------------------------------------------


class Module(keras.layers.Layer):
    """A layer with ``forward(x, training) -> (y, bn_updates)``.

    Variables are created in ``__init__`` (all shapes are known there), so a
    supernet is built as soon as it is constructed.
    """

    def forward(self, x, training=False):
        raise NotImplementedError  # abstract interface

    def gather_settings(self):
        """What `forward` branches on, apart from its variables' sizes; None: unknown.

        `Choice(selection="gather")` runs one candidate's modules on another
        candidate's variable values, so it needs candidates whose modules agree
        on these settings. A subclass whose `forward` depends only on its
        variables' values and its sub-modules returns ``()``; the default, None,
        keeps a module out of gathered choices.
        """
        return None

    def call(self, x, training=False):
        y, updates = self.forward(x, training)
        for variable, value in updates:
            variable.assign(value)
        return y


class Conv(Module):
    """kxk convolution without bias (SAME padding), optionally depthwise."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, depthwise=False,
                 bias=False, **kwargs):
        super().__init__(**kwargs)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = int(kernel_size), int(stride)
        self.depthwise = bool(depthwise)
        if self.depthwise and self.in_channels != self.out_channels:
            raise ValueError("A depthwise convolution keeps the channel count.")
        k = self.kernel_size
        shape = (k, k, self.in_channels, 1) if self.depthwise else (k, k, self.in_channels,
                                                                       self.out_channels)
        self.kernel = params_lib.add_param(self, "kernel", shape, "he_normal")
        self.bias = params_lib.add_param(self, "bias", (self.out_channels,), "zeros") if bias else None
        self.built = True

    def gather_settings(self):
        # The kernel size matters only through the 1x1 path (its value has the size).
        return (self.stride, self.depthwise, self.bias is not None,
                self.depthwise or self.kernel_size == 1)

    def forward(self, x, training=False):
        del training
        strides = (1, self.stride, self.stride, 1)
        # Values, not the variables: under `Choice`'s gathered selection a
        # variable stands for a value of another shape.
        kernel = self.kernel.value
        if self.depthwise:
            y = depthwise_conv(x, kernel, self.stride)
        elif self.kernel_size == 1:
            y = pointwise_conv(x, kernel, self.stride)
        else:
            y = tf.nn.conv2d(x, kernel, strides, "SAME")
        if self.bias is not None:
            y = y + self.bias.value
        return y, []


class Dense(Module):
    """Fully connected layer with bias."""

    def __init__(self, in_features, out_features, **kwargs):
        super().__init__(**kwargs)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.kernel = params_lib.add_param(self, "kernel", (self.in_features, self.out_features),
                                           "glorot_uniform")
        self.bias = params_lib.add_param(self, "bias", (self.out_features,), "zeros")
        self.built = True

    def gather_settings(self):
        return ()

    def forward(self, x, training=False):
        del training
        return tf.matmul(x, self.kernel) + self.bias, []


class BatchNorm(Module):
    """Batch normalisation whose statistic updates are returned, not assigned.

    Args:
      channels: feature channels.
      affine: whether gamma/beta exist (group ``weights``: SUMNAS adapts the
        whole sub-model in its inner loop).
      momentum: Keras convention, new = m * old + (1 - m) * batch (PyTorch 0.1
        is 0.9 here).
      epsilon: variance epsilon.
    """

    def __init__(self, channels, affine=True, momentum=0.9, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.affine = int(channels), bool(affine)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        if self.affine:
            self.gamma = params_lib.add_param(self, "gamma", (self.channels,), "ones")
            self.beta = params_lib.add_param(self, "beta", (self.channels,), "zeros")
        self.moving_mean = self.add_weight(name="moving_mean", shape=(self.channels,),
                                           initializer="zeros", trainable=False)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(self.channels,),
                                               initializer="ones", trainable=False)
        self.built = True

    def gather_settings(self):
        return (self.affine, self.momentum, self.epsilon)

    def forward(self, x, training=False):
        gamma = self.gamma if self.affine else None
        beta = self.beta if self.affine else None
        if not training:
            y = tf.nn.batch_normalization(x, self.moving_mean, self.moving_variance, beta, gamma,
                                          self.epsilon)
            return y, []
        mean, variance = tf.nn.moments(x, list(range(len(x.shape) - 1)))
        y = tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.epsilon)
        m = self.momentum
        mean, variance = tf.stop_gradient(mean), tf.stop_gradient(variance)
        updates = [
            (self.moving_mean, m * self.moving_mean + (1.0 - m) * mean),
            (self.moving_variance, m * self.moving_variance + (1.0 - m) * variance),
        ]
        return y, updates


class Sequential(Module):
    """Modules and plain functions (activations) applied in order."""

    def __init__(self, steps, **kwargs):
        super().__init__(**kwargs)
        self.steps = list(steps)
        self.built = True

    def gather_settings(self):
        # The plain functions in order; the modules are compared on their own.
        return tuple(None if isinstance(step, Module) else step for step in self.steps)

    def forward(self, x, training=False):
        updates = []
        for step in self.steps:
            if isinstance(step, Module):
                x, u = step.forward(x, training)
                updates += u
            else:
                x = step(x)
        return x, updates


class Lambda(Module):
    """A parameter-free candidate (identity, pooling, zero)."""

    def __init__(self, fn, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn
        self.built = True

    def gather_settings(self):
        return (self.fn,)

    def forward(self, x, training=False):
        del training
        return self.fn(x), []


def state_variables(module):
    """BN statistic variables of a module (its non-trainable variables)."""
    return list(module.non_trainable_variables)


def _structure(module):
    """What a block's forward pass does apart from its sizes: each module's type and
    `Module.gather_settings`, in order. None if a module does not say (see `Choice`)."""
    out = []
    for layer in module._flatten_layers(include_self=True, recursive=True):
        settings = layer.gather_settings() if isinstance(layer, Module) else None
        if settings is None:
            return None
        out.append((type(layer), settings))
    return out


class Choice(Module):
    """One layer/edge of a supernet: runs the candidate selected by `choice`.

    Args:
      candidates: `Module`s with identical output shapes.
      selection: "switch" (`tf.switch_case`, only the chosen candidate runs),
        "stack" (all run, the chosen output is gathered) or "gather" (the
        chosen candidate's weights are gathered and one block runs on them;
        needs candidates of one structure, differing only in their variables'
        sizes).

    Raises:
      ConfigError: an unknown selection, or "gather" with candidates of
        different structures.
    """

    def __init__(self, candidates, selection="switch", **kwargs):
        super().__init__(**kwargs)
        if selection not in SELECTIONS:
            raise errors.ConfigError(f"Unknown selection {selection!r}; valid: {SELECTIONS}.")
        self.candidates = list(candidates)
        self.selection = selection
        if selection == "gather":
            self._check_gatherable()
        self.built = True

    def _check_gatherable(self):
        if not self.candidates:
            raise errors.ConfigError(f"{self.name}: selection='gather' needs candidates.")
        template = self.candidates[0]
        structure = _structure(template)
        if structure is None:
            raise errors.ConfigError(
                f"{self.name}: selection='gather' needs modules that state what their forward "
                f"pass branches on (Module.gather_settings); {template.name} has one that does "
                "not. Use selection='switch'.")
        for i, candidate in enumerate(self.candidates[1:], 1):
            same = _structure(candidate) == structure and [
                (v.name, len(v.shape), v.dtype) for v in candidate.variables] == [
                (v.name, len(v.shape), v.dtype) for v in template.variables]
            if not same:
                raise errors.ConfigError(
                    f"{self.name}: selection='gather' needs candidates that differ only in "
                    f"their sizes; candidate {i} ({candidate.name}) is built differently from "
                    f"candidate 0 ({template.name}). Use selection='switch'.")

    def _forward_gathered(self, x, choice, training):
        """The chosen candidate's forward pass, run by candidate 0's modules on
        the chosen candidate's variables.

        One `tf.switch_case` picks the chosen candidate's variable values (its
        branches only pass values through; their gradients give the other
        candidates zeros, as a switch over whole candidates does). The values
        are read here, so inside a stateless call they are its fast weights.
        Candidate 0's modules run on them in a nested stateless scope that maps
        each of candidate 0's variables (and nothing else: a candidate's
        forward pass reads only its own variables), with channel counts and
        kernel sizes known only when the call runs: the chosen candidate's
        convolutions and batch norms, the 1x1 ones as dynamic-shape matrix
        products (equal to float rounding). A second `tf.switch_case` hands
        the new BN statistics to the chosen candidate and passes the others
        through.

        Raises:
          ConfigError: the forward pass assigned a variable (modules return
            their BN updates instead; an assignment would be lost).
        """
        template = self.candidates[0]
        columns = list(zip(*[c.variables for c in self.candidates]))
        num = self.num_choices
        values = tf.switch_case(choice, [
            (lambda i=i: [tf.identity(v.value) for v in self.candidates[i].variables])
            for i in range(num)])
        with keras.StatelessScope(initialize_variables=False) as scope:
            for column, value in zip(columns, values):
                shapes = np.array([v.shape for v in column])
                # Sizes the candidates share stay known when traced.
                value.set_shape([int(d[0]) if (d == d[0]).all() else None for d in shapes.T])
                scope.add_update((column[0], value))
            given = dict(scope.state_mapping)
            y, template_updates = template.forward(x, training)
            if params_lib.assigned_since(scope, given):
                raise errors.ConfigError(
                    f"{self.name}: a candidate's forward pass assigned a variable, which "
                    "selection='gather' would lose; return BN updates from forward instead.")
        if not template_updates:
            return y, []
        position = {id(v): p for p, v in enumerate(template.variables)}
        stats = [columns[position[id(v)]] for v, _ in template_updates]
        new = [value for _, value in template_updates]

        def hand_over(i):
            return lambda: [[tf.ensure_shape(value, column[j].shape) if j == i
                             else tf.identity(column[j].value) for j in range(num)]
                            for column, value in zip(stats, new)]

        out = tf.switch_case(choice, [hand_over(i) for i in range(num)])
        return y, [(v, value) for column, values in zip(stats, out)
                   for v, value in zip(column, values)]

    @property
    def num_choices(self):
        return len(self.candidates)

    def forward_choice(self, x, choice, training=False):
        if isinstance(choice, (int, np.integer)):
            # Static sub-model: only the chosen candidate enters the graph.
            return self.candidates[int(choice)].forward(x, training)
        choice = tf.convert_to_tensor(choice, tf.int32)
        if self.selection == "gather":
            return self._forward_gathered(x, choice, training)
        per_candidate = [state_variables(c) for c in self.candidates]
        all_state = [v for vs in per_candidate for v in vs]
        if self.selection == "switch":
            def branch(i):
                def fn():
                    y, updates = self.candidates[i].forward(x, training)
                    if not training:
                        return y
                    new = {id(v): val for v, val in updates}
                    # Non-chosen candidates' statistics pass through unchanged.
                    return y, [new.get(id(v), tf.identity(v.value)) for v in all_state]
                return fn

            out = tf.switch_case(choice, [branch(i) for i in range(self.num_choices)])
            if not training:
                return out, []
            y, values = out
            return y, list(zip(all_state, values))
        outs = [c.forward(x, training) for c in self.candidates]
        y = tf.gather(tf.stack([o[0] for o in outs]), choice)
        updates = []
        if training:
            for i, (_, upd) in enumerate(outs):
                chosen = tf.equal(choice, i)
                updates += [(v, tf.where(chosen, val, v.value)) for v, val in upd]
        return y, updates

    def forward(self, x, training=False):
        raise TypeError("Choice needs a choice: call forward_choice(x, choice, training).")


class Supernet(keras.Model):
    """Base class of weight-sharing supernets.

    Subclasses define ``num_layers`` (choice layers), ``num_choices`` and
    ``forward(x, arch, training) -> (logits, bn_updates)``, and list their
    `Choice` layers in ``self.choices`` (choice i reads ``arch[i]``).
    """

    def candidate_variables(self):
        """``{path: (layer, choice)}`` for every variable (weights and BN statistics)
        that belongs to one candidate; shared variables are not listed."""
        out = {}
        for layer_index, choice in enumerate(self.choices):
            for c, cand in enumerate(choice.candidates):
                for v in cand.variables:
                    out[v.path] = (layer_index, c)
        return out

    def call(self, x, training=False, arch=None):
        if arch is None:
            raise ValueError(
                f"{self.name} is a supernet: pass arch=<int32 tensor of {self.num_layers} choices>."
            )
        if isinstance(arch, (tuple, list)):
            # Static sub-model (Keras may have turned numpy ints into eager scalars).
            arch = tuple(int(a if isinstance(a, (int, np.integer)) else tf.get_static_value(a))
                         for a in arch)
        else:
            arch = tf.convert_to_tensor(arch, tf.int32)
        y, updates = self.forward(x, arch, training=training)
        for variable, value in updates:
            variable.assign(value)
        return y

    def validate_arch(self, arch):
        """Checks a Python/numpy architecture; returns it as a tuple of ints."""
        arch = tuple(int(a) for a in np.asarray(arch).reshape(-1))
        if len(arch) != self.num_layers or any(not 0 <= a < self.num_choices for a in arch):
            raise errors.ConfigError(
                f"Architecture {arch} is not valid for {self.name}: expected {self.num_layers} "
                f"choices in [0, {self.num_choices})."
            )
        return arch


def touched_mask(supernet, fm_paths, arch):
    """Per-variable booleans: does the sub-model `arch` use this variable?

    Shared variables (stem, reduction blocks, head) are always used; a
    candidate's variables only when ``arch[layer] == choice``. Used to keep
    untouched candidates out of momentum / weight-decay updates (PyTorch SPOS
    skips parameters whose gradient is None).

    Args:
      supernet: a `Supernet`.
      fm_paths: variable paths to report on.
      arch: int32 tensor [num_layers].

    Returns:
      ``{path: bool scalar tensor}``.
    """
    paths = list(fm_paths)
    if not paths:
        return {}
    return dict(zip(paths, tf.unstack(touched_vector(supernet, paths, arch))))


def touched_vector(supernet, fm_paths, arch):
    """`touched_mask` as one bool vector [len(fm_paths)], computed in a few ops
    (a gather and a comparison), not one comparison per variable."""
    owners = supernet.candidate_variables()
    layers = np.array([owners[p][0] if p in owners else -1 for p in fm_paths], np.int32)
    choices = np.array([owners[p][1] if p in owners else -1 for p in fm_paths], np.int32)
    if not (layers >= 0).any():
        return tf.ones([len(layers)], tf.bool)  # Only shared variables.
    picked = tf.gather(tf.cast(arch, tf.int32), np.maximum(layers, 0))
    return tf.logical_or(layers < 0, tf.equal(picked, choices))


# --------------------------------------------------------------------------
# Path sampling (stateless: a pure function of (seed, step)).
# --------------------------------------------------------------------------


def _seed(seed, step, salt):
    return tf.stack([tf.cast(seed, tf.int64) * 1000003 + salt, tf.cast(step, tf.int64)])


def sample_uniform(seed, step, num_layers, num_choices):
    """SPOS: one path, every layer's choice uniform. Returns int32 [num_layers].

    References: Guo et al., arXiv:1904.00420, Section 3.2.
    """
    return tf.random.stateless_uniform([num_layers], _seed(seed, step, 1), 0, num_choices,
                                       dtype=tf.int32)


def sample_fair(seed, step, num_layers, num_choices):
    """FairNAS strict fairness: ``num_choices`` paths covering every candidate once.

    Each layer draws an independent random permutation of its candidates;
    sub-model i takes the i-th entry of every layer's permutation. Resampled
    every step (a public SUMNAS re-implementation resamples once per epoch).

    Returns:
      int32 [num_choices, num_layers]; column l is a permutation of range(m).

    References: Chu et al., arXiv:1907.01845, Section 3.2, Algorithm 1.
    """
    keys = tf.random.stateless_uniform([num_layers, num_choices], _seed(seed, step, 2))
    return tf.cast(tf.transpose(tf.argsort(keys, axis=1, stable=True)), tf.int32)


def sample_archs(num_archs, num_layers, num_choices, seed):
    """``num_archs`` distinct uniformly random architectures (numpy, for ranking)."""
    rng = np.random.default_rng(seed)
    total = num_choices**num_layers
    if num_archs > total:
        raise errors.ConfigError(f"Cannot sample {num_archs} distinct archs from {total}.")
    seen, out = set(), []
    while len(out) < num_archs:
        a = tuple(int(v) for v in rng.integers(0, num_choices, num_layers))
        if a not in seen:
            seen.add(a)
            out.append(a)
    return np.asarray(out, np.int32)


# --------------------------------------------------------------------------
# BN recalibration and sub-model evaluation.
# --------------------------------------------------------------------------


def fixed_arch_train_step(fm, rule):
    """A compiled step training the weights of `fm` on one sub-model per call.

    ``step(step, images, labels, arch, rule_state) -> (loss, rule_state)``:
    cross-entropy of the sub-model `arch` (an int tensor, so one trace serves
    every architecture), one update of `rule` on the `weights` group, and the
    new weights and BN statistics assigned to the model. Standalone training
    of sampled architectures (ranking references) uses it; ``step.release()``
    lets its graphs go (`compiled.Step`).
    """

    def step(step, images, labels, arch, rule_state):
        params = fm.params("weights")
        with tf.GradientTape() as tape:
            tape.watch(params)
            logits, state = fm(params, None, images, training=True, arch=arch)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
        grads = tape.gradient(loss, params, unconnected_gradients="zero")
        params, rule_state = rule.apply(step, grads, params, rule_state)
        fm.assign_params(params)
        fm.assign_state(state)
        return loss, rule_state

    return compiled.step(step, trim_interval=0)


class SubmodelEvaluator:
    """Recalibrates BN statistics for a sub-model, then scores it on validation data.

    The two step functions are traced once (arch is a tensor, the batch size
    is left open). Recalibration computes, from the current weights, the
    exact mean of per-batch BN statistics over the calibration batches (a
    cumulative moving average, as in SPOS), layer by layer as the recalibrated
    statistics of earlier layers are not needed in training mode. Only
    non-trainable variables change.

    Args:
      model: a `Supernet`.
      calibration_batches: list of image batches (float32 NHWC).
      val_images, val_labels: validation data. uint8 images are kept as they
        are and scaled to [0, 1] per batch (`supervised_data.to_float`): a
        quarter of the memory of a float32 copy, the same scores.
      batch_size: evaluation batch size.

    References: Guo et al., arXiv:1904.00420, Section 3.4; Ha et al., ICLR
      2022, Section 4 (BN recalibration before evaluation).
    """

    def __init__(self, model, calibration_batches, val_images, val_labels, batch_size=256):
        self.model = model
        self.fm = params_lib.FunctionalModel(model)
        self.calibration = [tf.convert_to_tensor(b, tf.float32) for b in calibration_batches]
        self.val_images = np.asarray(val_images)
        if self.val_images.dtype != np.uint8:
            self.val_images = supervised_data.to_float(self.val_images)
        for batch in self.calibration:
            if tuple(batch.shape[1:]) != self.val_images.shape[1:]:
                raise errors.DataError(
                    f"Calibration images of shape {tuple(batch.shape[1:])} do not match the "
                    f"validation images' {self.val_images.shape[1:]}: both must come from the "
                    "same data at the same size.")
        self.val_labels = np.asarray(val_labels, np.int32)
        self.batch_size = int(batch_size)
        # Any batch size, one trace each: the last validation batch is usually
        # smaller, and a second trace of a supernet's forward pass costs seconds.
        images = tf.TensorSpec([None, *self.val_images.shape[1:]], tf.float32)
        arch = tf.TensorSpec([model.num_layers], tf.int32)
        self._stats = compiled.step(self._batch_stats, trim_interval=0,
                                    input_signature=(images, arch))
        self._score = compiled.step(
            self._batch_score, trim_interval=0,
            input_signature=(images, tf.TensorSpec([None], tf.int32), arch))

    def release(self):
        """Lets the evaluator's graphs go (`compiled.Step.release`); it cannot
        evaluate afterwards."""
        self._stats.release()
        self._score.release()

    def _batch_stats(self, images, arch):
        # From zero statistics a BN layer with momentum m returns (1 - m) *
        # batch statistics for the chosen ops (the others pass through).
        zero = {p: tf.zeros_like(v) for p, v in self.fm.state().items()}
        _, new_state = self.fm({}, zero, images, training=True, arch=arch)
        return new_state

    def recalibrate(self, arch):
        """Sets BN statistics of the sub-model `arch` to calibration-batch averages.

        Statistics of candidates that `arch` does not use are left unchanged.
        """
        arch_t = tf.constant(self.model.validate_arch(arch), tf.int32)
        sums = None
        for images in self.calibration:
            new_state = self._stats(images, arch_t)
            sums = new_state if sums is None else {p: sums[p] + v for p, v in new_state.items()}
        touched = touched_mask(self.model, self.fm.state_paths, arch_t)
        momentum = _bn_momenta(self.model)
        n = float(len(self.calibration))
        new_state = {}
        for p, v in self.fm.state_variables_by_path.items():
            batch_average = sums[p] / n / (1.0 - momentum[p])
            new_state[p] = tf.where(touched[p], batch_average, v.value)
        self.fm.assign_state(new_state)

    def _batch_score(self, images, labels, arch):
        logits, _ = self.fm({}, None, images, training=False, arch=arch)
        loss = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        return tf.reduce_sum(loss), tf.reduce_sum(correct)

    def score(self, arch):
        """Validation ``(accuracy, loss)`` of `arch` with the current BN statistics."""
        arch = tf.constant(self.model.validate_arch(arch), tf.int32)
        total_loss = total_correct = 0.0
        n = len(self.val_labels)
        for start in range(0, n, self.batch_size):
            images = supervised_data.to_float(self.val_images[start:start + self.batch_size])
            loss, correct = self._score(images,
                                        self.val_labels[start:start + self.batch_size], arch)
            total_loss += float(loss)
            total_correct += float(correct)
        return total_correct / n, total_loss / n

    def evaluate(self, arch, recalibrate=True):
        """Recalibrates BN (optionally) and returns ``{"accuracy", "loss"}``.

        BN statistics are restored afterwards, so evaluating sub-models in any
        order gives the same numbers and training is not disturbed.
        """
        saved = self.fm.state()
        try:
            if recalibrate:
                self.recalibrate(arch)
            accuracy, loss = self.score(arch)
        finally:
            self.fm.assign_state(saved)
        return {"accuracy": accuracy, "loss": loss}

    def evaluate_many(self, archs, recalibrate=True):
        """`evaluate` for each architecture; returns a list of dicts."""
        return [self.evaluate(a, recalibrate) for a in archs]


def _bn_momenta(model):
    """``{path: momentum}`` for every BN statistic variable of `model`."""
    out = {}
    for layer in model._flatten_layers():
        if isinstance(layer, BatchNorm):
            out[layer.moving_mean.path] = layer.momentum
            out[layer.moving_variance.path] = layer.momentum
    return out
