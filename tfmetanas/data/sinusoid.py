"""Sinusoid regression tasks (the MAML protocol, Finn et al. 2017, arXiv:1703.03400, Sec. 5.1).

Task i draws an amplitude A ~ U[0.1, 5.0] and a phase phi ~ U[0, pi]; its
K support and Q query points have x ~ U[-5, 5] and y = A sin(x - phi).
K = data.shots, Q = data.queries (default: K, as in MAML and ALFA). There is
no finite set of classes, so every split draws from the same distribution;
splits differ only in their random streams.
"""

import math

import tensorflow as tf

from tfmetanas.data import base

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


class SinusoidSource(base.TaskSource):
    """Sinusoid regression episodes; `task(i)` is a pure function of (seed, split, i)."""

    kind = "regression"

    def __init__(self, *, split, seed, shots, queries):
        super().__init__(split, seed, ways=1, shots=shots, queries=queries)
        self.input_shape = (1,)
        self.output_dim = 1
        self.num_classes = 0
        self.preprocess_spec = {
            "kind": "regression",
            "x_range": list(X_RANGE),
            "amplitude_range": list(AMPLITUDE_RANGE),
            "phase_range": list(PHASE_RANGE),
        }

    def task(self, index):
        """Samples task `index`.

        Args:
          index: python int or scalar integer tensor.

        Returns:
          {"support_x": float32 [K, 1], "support_y": float32 [K, 1],
           "query_x": float32 [Q, 1], "query_y": float32 [Q, 1]}.
        """
        k, q = self.shots, self.queries
        params_key, x_key = tf.unstack(
            tf.random.experimental.stateless_split(self.task_key(index), 2, alg=base._ALG)
        )
        u = tf.random.stateless_uniform([2], params_key, alg=base._ALG)
        amplitude = AMPLITUDE_RANGE[0] + u[0] * (AMPLITUDE_RANGE[1] - AMPLITUDE_RANGE[0])
        phase = PHASE_RANGE[0] + u[1] * (PHASE_RANGE[1] - PHASE_RANGE[0])
        x = tf.random.stateless_uniform(
            [k + q, 1], x_key, minval=X_RANGE[0], maxval=X_RANGE[1], alg=base._ALG
        )
        y = amplitude * tf.sin(x - phase)
        return {"support_x": x[:k], "support_y": y[:k], "query_x": x[k:], "query_y": y[k:]}


def build(data_config, split, seed):
    """Builds the sinusoid `TaskSource` (keys: shots, default 10; queries, default = shots)."""
    shots = int(base.cfg_get(data_config, "shots", 10))
    queries = int(base.cfg_get(data_config, "queries", shots))
    return SinusoidSource(split=split, seed=seed, shots=shots, queries=queries)
