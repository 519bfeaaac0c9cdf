"""Parameters are values, models are functions.

Every trainable variable of a tfmetanas model belongs to exactly one
*parameter group*, declared where the variable is created:

- ``weights``: adapted in the inner loop and meta-learned (conv/dense kernels,
  DARTS op weights);
- ``arch``: architecture logits (METANAS alpha/beta), adapted by METANAS and
  meta-learned;
- ``meta``: learned in the outer loop only (BN gamma/beta by default, MAML++
  per-step BN weights, LSLR rates, ALFA generator).

Non-trainable variables are *state* (BN statistics).

`FunctionalModel` turns a built Keras model into a pure function
``(params, state, inputs) -> (outputs, new_state)`` through Keras 3
``stateless_call``. Inner loops work on dicts of tensors keyed by variable path
(``fast_weights``); they never assign to variables and never clone models.
Parameters that are not passed in are read from the variables, so an outer
`tf.GradientTape` sees them.
"""

import keras
import numpy as np
import tensorflow as tf

from tfmetanas import errors

GROUPS = ("weights", "arch", "meta")
_ATTR = "_tfmetanas_group"


def set_group(variable, group):
    """Declares the parameter group of a trainable variable; returns it."""
    if group not in GROUPS:
        raise errors.ConfigError(f"Unknown parameter group {group!r}; valid: {GROUPS}.")
    setattr(variable, _ATTR, group)
    return variable


def group_of(variable):
    """The group of a trainable variable (untagged ones are ``weights``)."""
    return getattr(variable, _ATTR, "weights")


def add_param(layer, name, shape, initializer, group="weights", trainable=True, dtype=None):
    """`layer.add_weight` that also declares the group of the new variable."""
    v = layer.add_weight(
        name=name, shape=shape, initializer=initializer, trainable=trainable, dtype=dtype
    )
    if trainable:
        set_group(v, group)
    return v


def step_row(table, step, rows=None):
    """Row ``min(step, rows - 1)`` of a per-step `table` (``rows`` default: its first dim).

    A Python step (unrolled inner loops) slices statically; a tensor step
    (`tf.while_loop` inner loops) gathers. The static slice builds a few graph
    nodes where the gather and its gradient (sparse, then made dense) build
    about ten, and second-order MAML differentiates it twice per step.
    """
    rows = int(table.shape[0]) if rows is None else int(rows)
    if isinstance(table, keras.Variable):
        table = table.value
    if isinstance(step, (int, np.integer)):
        # ``table[k]`` with the bounds as shared constants (`shared_constant`).
        k = min(int(step), rows - 1)
        return tf.strided_slice(table, shared_constant([k]), shared_constant([k + 1]),
                                shared_constant([1]), shrink_axis_mask=1)
    return tf.gather(table, tf.minimum(tf.cast(step, tf.int32), rows - 1))


def step_one_hot(step, rows, dtype, complement=False):
    """``[rows, 1]`` one-hot column of row ``min(step, rows - 1)`` (a constant for Python
    steps), or with `complement` one minus it."""
    if isinstance(step, (int, np.integer)):
        column = np.eye(rows)[min(int(step), rows - 1)][:, None]
        return shared_constant(1.0 - column if complement else column, dtype)
    index = tf.minimum(tf.cast(step, tf.int32), rows - 1)
    column = tf.one_hot(index, rows, dtype=dtype)[:, None]
    return 1.0 - column if complement else column


def set_layer_group(layer, group):
    """Declares every trainable variable of a built layer as `group`."""
    for v in layer.trainable_variables:
        set_group(v, group)


class FunctionalModel:
    """A built Keras model seen as a pure function of its parameter values.

    Args:
      model: a built `keras.Model` (call it once, or `build` it, first).

    Example:
      fm = FunctionalModel(model)
      fast_weights = fm.params("weights")
      logits, state = fm(fast_weights, fm.state(), images, training=True)
    """

    def __init__(self, model):
        if not model.built:
            raise ValueError("FunctionalModel needs a built model: call it on a batch first.")
        self.model = model
        self.trainable_variables = list(model.trainable_variables)
        self.non_trainable_variables = list(model.non_trainable_variables)
        self.paths = [v.path for v in self.trainable_variables]
        self.state_paths = [v.path for v in self.non_trainable_variables]
        if len(set(self.paths)) != len(self.paths):
            raise ValueError(f"Variable paths of {model.name} are not unique: {self.paths}")
        self.variables_by_path = {v.path: v for v in self.trainable_variables}
        self.state_variables_by_path = {v.path: v for v in self.non_trainable_variables}
        self.group_of = {v.path: group_of(v) for v in self.trainable_variables}
        # A model whose training calls neither read nor change its state (e.g. a
        # search network whose batch norms never track statistics) says so with
        # ``training_uses_state = False``; see `training_state`.
        self.training_uses_state = bool(getattr(model, "training_uses_state", True))

    def variables(self, group=None):
        """Trainable variables of one group (all if None), in model order."""
        return [
            v
            for v in self.trainable_variables
            if group is None or self.group_of[v.path] == group
        ]

    def paths_of(self, group):
        return [p for p in self.paths if self.group_of[p] == group]

    def params(self, groups=None):
        """Current values ``{path: tensor}`` of the variables of `groups`.

        Values are read with `tf.identity`, so an outer tape that watches the
        variables differentiates through them.
        """
        if isinstance(groups, str):
            groups = (groups,)
        return {
            v.path: tf.identity(v.value)
            for v in self.trainable_variables
            if groups is None or self.group_of[v.path] in groups
        }

    def state(self):
        """Current non-trainable state ``{path: tensor}`` (BN statistics)."""
        return {v.path: tf.identity(v.value) for v in self.non_trainable_variables}

    def training_state(self):
        """The state training calls carry: `state`, or ``{}`` for a model whose
        training calls neither read nor change it (``training_uses_state``).

        A state dict that leaves out a path means the variable's own value (see
        `__call__`), which training never changes here; so loops over training
        calls carry nothing, read no variable and assign nothing back, and an
        inference call on ``{}`` reads the variables as before.
        """
        return self.state() if self.training_uses_state else {}

    def __call__(self, params, state, inputs, training=False, **kwargs):
        """Runs the model on substituted values.

        Args:
          params: ``{path: tensor}`` for some trainable variables; the others are
            read from the variables themselves.
          state: ``{path: tensor}`` for the non-trainable variables, or None to
            read them from the variables (paths left out: read too). In a
            training call of a model with ``training_uses_state = False``
            nothing is read: every state value is a NaN constant (one per
            shape), so a model that reads its state after all gives NaN, and
            one that assigns it raises `ConfigError`.
          inputs: model inputs.
          training: passed to the model.
          **kwargs: extra call arguments (``step``, ``temperature``, ...).

        Returns:
          ``(outputs, new_state)`` with new_state a ``{path: tensor}`` dict (for
          such a training call: `state` as given, ``{}`` for None).
        """
        trainable = [params.get(v.path, v.value) for v in self.trainable_variables]
        if training is True and not self.training_uses_state:
            unread = {}
            for v in self.non_trainable_variables:
                key = (tuple(v.shape), v.dtype)
                if key not in unread:
                    unread[key] = tf.constant(np.full(v.shape, np.nan), v.dtype)
            given = [unread[(tuple(v.shape), v.dtype)] for v in self.non_trainable_variables]
            outputs, new = self.model.stateless_call(
                trainable, given, inputs, training=training, **kwargs
            )
            changed = [p for p, a, b in zip(self.state_paths, new, given) if a is not b]
            if changed:
                raise errors.ConfigError(
                    f"{self.model.name} says its training calls leave its state alone "
                    f"(training_uses_state = False), but this one assigned {changed[:3]}."
                )
            return outputs, dict(state or {})
        if state is None:
            non_trainable = [v.value for v in self.non_trainable_variables]
        else:
            non_trainable = [state.get(v.path, v.value) for v in self.non_trainable_variables]
        outputs, new_non_trainable = self.model.stateless_call(
            trainable, non_trainable, inputs, training=training, **kwargs
        )
        return outputs, dict(zip(self.state_paths, new_non_trainable))

    def assign_state(self, state):
        for path, value in state.items():
            self.state_variables_by_path[path].assign(value)

    def assign_params(self, params):
        for path, value in params.items():
            self.variables_by_path[path].assign(value)

    def count_params(self, groups=("weights",)):
        return int(sum(keras.ops.size(v) for v in self.trainable_variables if self.group_of[v.path] in groups))


class Packing:
    """The layout of a dict of same-dtype tensors packed into one flat vector.

    A `tf.while_loop` that carries one vector instead of hundreds of tensors
    (the fast weights, BN statistics and update-rule moments of a search
    network) builds far fewer graph nodes: every loop variable costs nodes
    of its own when the loop is lowered for execution, and an element-wise
    update rule applied to one vector is a handful of ops instead of a
    handful per tensor. Packing is a copy, cheap next to the model's work.

    Args:
      values: ``{path: tensor}`` with static shapes, the layout to keep.

    Example:
      layout = Packing(params)
      flat = layout.pack(params)            # [total size]
      params = layout.unpack(flat)          # the same dict again

    In a graph, packing the untouched tensors of an `unpack` (e.g. a BN state
    the model returned as it got it, or a loop's result packed again by its
    caller) returns the unpacked vector itself instead of rebuilding it: the
    same value without a reshape per tensor and a concat.
    """

    def __init__(self, values):
        self.paths = list(values)
        self.shapes = [tuple(int(d) for d in v.shape) for v in values.values()]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        dtypes = {tf.as_dtype(v.dtype) for v in values.values()}
        if len(dtypes) > 1:
            raise ValueError(f"Packing needs one dtype, got {sorted(d.name for d in dtypes)}.")
        self.dtype = dtypes.pop() if dtypes else tf.float32

    @staticmethod
    def supports(values):
        """Whether `values` can be packed: one dtype, fully known shapes."""
        dtypes = {tf.as_dtype(v.dtype) for v in values.values()}
        return len(dtypes) <= 1 and all(v.shape.is_fully_defined() for v in values.values())

    @classmethod
    def if_supported(cls, values):
        """The `Packing` of `values`, or None where `supports` says no."""
        return cls(values) if cls.supports(values) else None

    @classmethod
    def by_group(cls, values, group_of):
        """``{group: Packing}`` of the non-empty parameter groups of `values`."""
        groups = {}
        for path, value in values.items():
            groups.setdefault(group_of[path], {})[path] = value
        return {g: cls(d) for g, d in groups.items()}

    def pack(self, values):
        """``[total]``: the tensors of `values` (in layout order), flattened and concatenated."""
        if not self.paths:
            return tf.zeros([0], self.dtype)
        source = _unpacked_source([values[p] for p in self.paths])
        if source is not None:
            return source
        flat_shape = shared_constant([-1])
        return tf.concat([tf.reshape(values[p], flat_shape) for p in self.paths], axis=0)

    def unpack(self, flat):
        """The dict `pack` packed."""
        if not self.paths:
            return {}
        pieces = tf.split(flat, self.sizes)
        out = {p: tf.reshape(x, shared_constant(s))
               for p, s, x in zip(self.paths, self.shapes, pieces)}
        _remember_unpacked(list(out.values()), flat)
        return out


def assigned_since(scope, given):
    """Ids of the variables a call assigned inside the `keras.StatelessScope` `scope`.

    `given` is a copy of ``scope.state_mapping`` taken before the call; a
    variable counts when the scope now maps it to another value, or maps it and
    did not before. Used where such an assignment would be lost (recomputed
    calls, a supernet's gathered candidates) to refuse it.
    """
    mapping = scope.state_mapping
    return {k for k in mapping.keys() | given.keys() if mapping.get(k) is not given.get(k)}


def shared_constant(value, dtype=tf.int32):
    """`value` (a number or a nested list: a shape, reduction axes, an epsilon) as a
    tensor of `dtype`, one `Const` node per traced graph, value and dtype.

    In a traced function every ``tf.constant``, every ``tf.reshape(x, [a, b])``
    and every Python number in an op adds a node of its own, and a search
    network's step reshapes, reduces and adds epsilons hundreds of times with
    a handful of distinct values. Each node costs memory for as long as the
    function lives and time to trace and optimise (docs/performance.md,
    sessions 7 and 19). Eagerly, or under a `tf.distribute` strategy (whose
    replicas, traced into one graph, each place their own constants), it is an
    ordinary constant; a tensor is converted as it is. Values are converted by
    TensorFlow's rules (`tf.make_tensor_proto`).
    """
    dtype = tf.as_dtype(dtype)
    if tf.is_tensor(value):
        return tf.convert_to_tensor(value, dtype)
    proto = tf.make_tensor_proto(value, dtype)
    if tf.executing_eagerly() or tf.distribute.has_strategy():
        return tf.constant(tf.make_ndarray(proto), dtype)
    cache = _graph_dict("_tfmetanas_constants")
    key = proto.SerializeToString()
    tensor = cache.get(key)
    if tensor is None:
        # Made outside any control dependencies, so that every use may share it.
        with tf.control_dependencies(None):
            tensor = tf.constant(tf.make_ndarray(proto), dtype)
        cache[key] = tensor
    return tensor


def _graph_dict(name):
    """A dict of ours kept on the current (traced) graph as attribute `name`: it
    lives and dies with the graph."""
    graph = tf.compat.v1.get_default_graph()
    registry = getattr(graph, name, None)
    if registry is None:
        registry = {}
        setattr(graph, name, registry)
    return registry


def _unpacked_registry():
    """``{id(tensor): (tensor, flat, position, count)}`` of the current graph's
    unpacked tensors (None when executing eagerly)."""
    return None if tf.executing_eagerly() else _graph_dict("_tfmetanas_unpacked")


def _remember_unpacked(tensors, flat):
    registry = _unpacked_registry()
    if registry is not None:
        for i, t in enumerate(tensors):
            # The tensor itself is kept, so its id cannot be reused in this graph.
            registry[id(t)] = (t, flat, i, len(tensors))


def _unpacked_source(tensors):
    """The vector that `tensors` are, in order, the complete unpacking of; else None."""
    registry = _unpacked_registry()
    if not registry:
        return None
    flat = None
    for i, t in enumerate(tensors):
        entry = registry.get(id(t))
        if entry is None or entry[0] is not t or entry[2] != i or entry[3] != len(tensors):
            return None
        if flat is None:
            flat = entry[1]
        elif entry[1] is not flat:
            return None
    return flat
