"""Calls whose activations are recomputed in the backward pass, for layers whose
weights are values.

Gradient checkpointing keeps only a block's inputs and outputs for the
backward pass and runs the block's forward again there: less memory for the
step's tensors (their peak is what a METANAS task step's memory is) at the
cost of one more forward pass of the block. `tf.recompute_grad` differentiates
the tensors passed in and the variables read, but a `FunctionalModel` call
reads *fast weights*: tensors a Keras stateless scope maps the variables to,
which such a block would only capture. `recomputed_call` passes the layer's
current values (the mapped fast weights, or the variables' own values) in as
explicit inputs, and runs the forward pass and its recomputation in a stateless
scope that maps the layer's variables to them; so gradients reach the fast
weights, to any order (the recomputation is differentiable).
"""

import keras
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.models import params as params_lib


def recomputed_call(layer, fn, *args):
    """``fn(*args)``, a call that runs only `layer`'s variables, recomputed when differentiated.

    Args:
      layer: the Keras layer whose variables `fn` reads (every one of them is
        passed in: trainable ones receive gradients).
      fn: the call; its tensor arguments come from `args` (nested structures
        of tensors and Python values; only tensors receive gradients).
      *args: the arguments.

    Returns:
      ``fn(*args)`` (a tensor or a flat structure of tensors).

    Raises:
      ConfigError: `fn` assigned one of the layer's variables (a BN moving
        statistic, say): the update would be lost in the recomputation's scope.
    """
    variables = list(layer.variables)
    values = [tf.convert_to_tensor(v.value) for v in variables]
    flat = tf.nest.flatten(args)
    tensor_at = [i for i, a in enumerate(flat) if tf.is_tensor(a)]
    num_args = len(tensor_at)

    def run(arg_tensors, var_values):
        filled = list(flat)
        for i, t in zip(tensor_at, arg_tensors):
            filled[i] = t
        with keras.StatelessScope(state_mapping=list(zip(variables, var_values))) as scope:
            given = dict(scope.state_mapping)
            out = fn(*tf.nest.pack_sequence_as(args, filled))
            assigned = params_lib.assigned_since(scope, given)
            changed = [v.path for v in variables if id(v) in assigned]
        if changed:
            raise errors.ConfigError(
                f"A recomputed call of {layer.name} assigned {changed[:3]}; the update would be "
                "lost. Recompute only layers whose training calls leave their state alone "
                "(e.g. model.darts.running_stats=False)."
            )
        return out

    @tf.custom_gradient
    def call(*inputs):
        out = run(inputs[:num_args], inputs[num_args:])

        def grad(*dys):
            # Read through identities that wait for the output gradients, so the
            # recomputation runs in the backward pass and is not merged with
            # the forward one.
            with tf.control_dependencies([d for d in dys if d is not None]):
                again = [tf.identity(t) for t in inputs]
            watched = [t for t in again if t.dtype.is_floating]
            with tf.GradientTape() as tape:
                tape.watch(watched)
                out_again = run(again[:num_args], again[num_args:])
            grads = iter(tape.gradient(tf.nest.flatten(out_again), watched,
                                       output_gradients=list(dys)))
            return [next(grads) if t.dtype.is_floating else None for t in again]

        return out, grad

    return call(*[flat[i] for i in tensor_at], *values)
