"""How the package compiles its own code: `tf.function` without AutoGraph.

The engine's graphs are built from explicit TensorFlow control flow
(`tf.while_loop`, `tf.cond`, `tf.switch_case`) and from Python loops meant to
unroll (inner steps, cells, candidate operations). AutoGraph would only
re-read that Python source to look for tensor-dependent control flow there is
none of, and it wraps every call and loop it meets on the way: a METANAS meta-step
(23,000 nodes) traced in 8.9 s with it and 6.1 s without
(docs/performance.md, "Compile time without AutoGraph"). So every `tf.function`
of the package is made here, with ``autograph=False``; a Python ``if`` or
``while`` on a tensor inside one fails while tracing ("using a `tf.Tensor` as a
Python `bool` is not allowed") instead of being converted.
"""

import functools

import tensorflow as tf

from tfmetanas import errors, memory

GRAPH_OPTIMIZER = ("default", "off")


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
    """Applies ``train.graph_optimizer``: "default" (Grappler on) or "off".

    TensorFlow optimises a graph (Grappler: constant folding, arithmetic
    simplification, op fusion, memory rewrites, ...) when a `tf.function`'s
    concrete function is first called. On the METANAS search network's step it
    takes about 7 of a first call's 25 s and the step runs no faster for it
    (docs/performance.md, "Graph optimisation off for METANAS"), so the METANAS
    configs turn it off; the conv4 and ResNet configs keep it (it fuses their
    convolutions with bias and activation).

    The setting belongs to the process (`tf.config.optimizer`), and is applied
    to it whatever it was before, so that configs run one after another in one
    process (tests, notebooks) each get their own. It applies to functions
    first called after it; results do not depend on it.
    """
    choice = str(train_config.get("graph_optimizer", "default"))
    if choice not in GRAPH_OPTIMIZER:
        raise errors.ConfigError(
            f"train.graph_optimizer must be one of {GRAPH_OPTIMIZER}, got {choice!r}.")
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": choice == "off"})
