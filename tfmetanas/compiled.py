"""How the package compiles its own code: `tf.function` without AutoGraph.

The engine's graphs are built from explicit TensorFlow control flow
(`tf.while_loop`, `tf.cond`, `tf.switch_case`) and from Python loops meant to
unroll (inner steps, cells, candidate operations). AutoGraph would only
re-read that Python source to look for tensor-dependent control flow there is
none of, and it wraps every call and loop it meets on the way: a METANAS meta-step
(24,648 nodes) traced in 9.7-10.1 s with it and 6.1-6.4 s without
(docs/performance.md, "Compile time: no AutoGraph, fewer graph passes"). So every `tf.function`
of the package is made here, with ``autograph=False``; a Python ``if`` or
``while`` on a tensor inside one fails while tracing ("using a `tf.Tensor` as a
Python `bool` is not allowed") instead of being converted.
"""

import functools

import tensorflow as tf

from tfmetanas import errors, memory

# Grappler passes a config may skip (`tf.config.optimizer` names; all on by default).
GRAPH_OPTIMIZATIONS = (
    "arithmetic_optimization", "constant_folding", "dependency_optimization",
    "function_optimization", "layout_optimizer", "loop_optimization", "remapping",
    "shape_optimization",
)


def function(fn=None, **kwargs):
    """`tf.function(fn, autograph=False, **kwargs)`; also a decorator, with or without arguments."""
    if "autograph" in kwargs:
        raise TypeError("tfmetanas.compiled.function always traces without AutoGraph.")
    if fn is None:
        return functools.partial(function, **kwargs)
    return tf.function(fn, autograph=False, **kwargs)


def step(fn, jit_compile=False, trim_interval=memory.DEFAULT_INTERVAL, **kwargs):
    """A training or evaluation step: `function`, first calls trimmed, releasable.

    Args:
      fn: the Python function.
      jit_compile: compile with XLA.
      trim_interval: see `tfmetanas.memory.FirstCallTrimmed` (0: off).
      **kwargs: more `tf.function` arguments (e.g. ``reduce_retracing``).

    Returns:
      A `Step` around the `tf.function`.
    """
    names = set()
    return Step(function(_recording_custom_gradients(fn, names), jit_compile=jit_compile,
                         **kwargs), trim_interval, custom_gradients=names)


# TensorFlow names the gradient function of each traced `tf.custom_gradient`
# call "CustomGradient-<uid>" and registers it for good (custom_gradient.py).
_CUSTOM_GRADIENT_PREFIX = "CustomGradient-"


def _gradient_registry():
    """TensorFlow's table of registered gradient functions (a private dict), or None
    if this TensorFlow keeps it elsewhere (then nothing is purged)."""
    try:
        from tensorflow.python.framework import ops
    except ImportError:
        return None
    table = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return table if isinstance(table, dict) else None


def _custom_gradient_names():
    table = _gradient_registry()
    if table is None:
        return set()
    return {name for name in list(table) if name.startswith(_CUSTOM_GRADIENT_PREFIX)}


def _recording_custom_gradients(fn, names):
    """`fn`, adding to `names` the custom gradients registered while it runs.

    A `tf.function` runs its Python function only while tracing, so `names`
    collects the registrations of every trace.
    """

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        before = _custom_gradient_names()
        try:
            return fn(*args, **kwargs)
        finally:
            names.update(_custom_gradient_names() - before)

    return traced



class _ReleasedAttributeError(errors.TFMetaNASError, AttributeError):
    """An attribute of a released `Step`."""


class Step(memory.FirstCallTrimmed):
    """A compiled step (`step`) whose graphs can be let go once it is no longer used.

    TensorFlow keeps every traced `tf.custom_gradient` call's gradient function
    in a global registry for the life of the process, and the function holds
    the tensors of its graph (TensorFlow issues 27492 and 97697): a traced
    graph that uses one (the package's batch norm, pooling and recomputation
    do) is never freed, even when nothing else refers to it. `release`
    removes the registrations this step's traces made, so that the step's
    traced graphs and TensorFlow's instantiated copies go once the step
    itself does. The trainer releases a meta-step when a new phase's step
    supersedes it (METANAS' warm-up, MAML++'s derivative-order annealing): a
    short METANAS run across the warm-up peaked 279-283 MB lower
    (docs/performance.md, "Session 21").

    What a step records is every registration made while it traced: also
    those of a `tf.function` first traced inside it, and of another thread
    tracing at the same time. So release a step only when no function traced
    inside it is used elsewhere and no other trace ran alongside (the
    package's steps call no other `tf.function`, and trace one at a time); a
    graph whose registrations went would fail to differentiate with
    TensorFlow's "No gradient defined" `LookupError`.

    Args:
      fn: the `tf.function`.
      interval, trim: see `tfmetanas.memory.FirstCallTrimmed`.
      custom_gradients: the set `fn`'s traces add their registrations to
        (`step` makes it; None: nothing recorded, `release` only drops `fn`).
    """

    def __init__(self, fn, interval=memory.DEFAULT_INTERVAL, trim=None, *, custom_gradients=None):
        super().__init__(fn, interval, trim)
        self._custom_gradients = set() if custom_gradients is None else custom_gradients
        self.released = False

    def __call__(self, *args, **kwargs):
        if self.released:
            raise errors.TFMetaNASError("This compiled step was released; make a new one.")
        return super().__call__(*args, **kwargs)

    def __getattr__(self, name):
        # The wrapped function's API (get_concrete_function, ...), refused once
        # released; an AttributeError too, so that hasattr, getattr with a
        # default and copying see a missing attribute.
        if not name.startswith("__") and name not in ("fn", "released") and self.released:
            raise _ReleasedAttributeError(
                f"This compiled step was released; it has no {name!r} any more.")
        return super().__getattr__(name)

    def release(self):
        """Lets the step's graphs go: it cannot be called afterwards.

        Drops the `tf.function` and the gradient registrations of its traces.
        Differentiating a call of it made before (from outside: its own
        gradients were traced with it) would then fail with TensorFlow's
        "No gradient defined" `LookupError`. The memory is freed at the next
        garbage collection (``gc.collect()``: the graphs hold reference cycles).
        """
        if self.released:
            return
        self.released = True
        self.fn = None
        table = _gradient_registry()
        if table is not None:
            for name in self._custom_gradients:
                table.pop(name, None)
        self._custom_gradients.clear()


def configure_graph_optimizer(train_config):
    """Applies ``train.skip_graph_optimizations``: Grappler passes not to run.

    TensorFlow optimises a graph (Grappler) when a `tf.function`'s concrete
    function is first called. The value is "" (every pass runs, the default
    of every config), "all" (Grappler off) or comma-separated names from
    `GRAPH_OPTIMIZATIONS`. On the METANAS search network's step, arithmetic
    simplification, constant folding, the layout pass and op fusion
    (remapping) take 1-5 s of a first call of 25-30 s (within the spread
    between runs), and the step neither runs faster nor holds less for them;
    Grappler as a whole keeps the step's peak memory 330 MB lower
    (docs/performance.md, "Compile time: no AutoGraph, fewer graph passes").
    No config skips passes by default.

    The setting belongs to the process (`tf.config.optimizer`) and is applied
    whole (passes not skipped go back to TensorFlow's default), whatever was
    set before, so that configs run one after another in
    one process (tests, notebooks) each get their own. It reaches functions
    first called after it.

    Raises:
      ConfigError: for a name that is not a skippable pass.
    """
    value = train_config.get("skip_graph_optimizations", "") or ""
    if not isinstance(value, str):  # A list or tuple of names.
        value = ",".join(str(name) for name in value)
    skip = {name.strip() for name in value.split(",") if name.strip()}
    off = skip == {"all"}
    unknown = sorted(skip - set(GRAPH_OPTIMIZATIONS)) if not off else []
    if unknown:
        raise errors.ConfigError(
            f"train.skip_graph_optimizations={value!r}: unknown {unknown}; use \"\", \"all\" or "
            f"comma-separated names from {', '.join(GRAPH_OPTIMIZATIONS)}.")
    # None: TensorFlow's default (every pass on, Grappler on).
    options = {name: False if name in skip else None for name in GRAPH_OPTIMIZATIONS}
    options["disable_meta_optimizer"] = True if off else None
    tf.config.optimizer.set_experimental_options(options)
