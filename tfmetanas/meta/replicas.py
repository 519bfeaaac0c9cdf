"""What a meta-step needs to know about `tf.distribute` replicas.

A meta-step runs in a replica context (`strategy.run`); with the default
strategy there is one replica and everything here is the plain operation.
With several replicas (MirroredStrategy, MultiWorkerMirroredStrategy, TPU):

- `num_replicas` gives the count that turns a replica's share of the
  meta-batch into a fraction of the global meta-batch;
- `all_reduce_mean` averages values (BN statistics, the persistent inner
  rule state) over replicas;
- `assign_synced` writes values that are already identical on every replica
  into mirrored variables. Assigning a mirrored variable in a replica context
  needs an aggregation mode the model's state variables do not (and should
  not) declare; like Keras' optimizer, we step into the cross-replica context
  (`merge_call`) and update each local copy with its replica's value, without
  a second all-reduce.
"""

import keras
import tensorflow as tf


def _context():
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return None
    return ctx


def num_replicas():
    """Replicas in sync in the current replica context (1 outside any strategy)."""
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else int(ctx.num_replicas_in_sync)


def all_reduce_mean(structure):
    """Mean over replicas of every tensor of a nested structure (identity for one replica)."""
    ctx = _context()
    if ctx is None:
        return structure
    flat = tf.nest.flatten(structure)
    if not flat:
        return structure
    reduced = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, flat)
    return tf.nest.pack_sequence_as(structure, reduced)


def _tf_variable(variable):
    # Keras 3 variables wrap a tf.Variable (a MirroredVariable under a strategy).
    return variable.value if isinstance(variable, keras.Variable) else variable


def assign_synced(variables, values):
    """Assigns `values` (equal on every replica) to `variables`.

    Args:
      variables: list of Keras or tf variables created under the strategy.
      values: list of tensors, one per variable, already reduced across replicas.
    """
    variables, values = list(variables), list(values)
    ctx = _context()
    if ctx is None:
        for v, t in zip(variables, values):
            v.assign(t)
        return

    def merge(strategy, values):
        for v, t in zip(variables, values):
            strategy.extended.update(
                _tf_variable(v), lambda var, value: var.assign(value), args=(t,), group=False
            )

    ctx.merge_call(merge, args=(values,))
