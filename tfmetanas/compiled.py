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
    """A training or evaluation step: `function`, first calls trimmed.

    Args:
      fn: the Python function.
      jit_compile: compile with XLA.
      trim_interval: see `tfmetanas.memory.FirstCallTrimmed` (0: off).
      **kwargs: more `tf.function` arguments (e.g. ``reduce_retracing``).

    Returns:
      A `tfmetanas.memory.FirstCallTrimmed` around the `tf.function`.
    """
    return memory.FirstCallTrimmed(function(fn, jit_compile=jit_compile, **kwargs), trim_interval)


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
