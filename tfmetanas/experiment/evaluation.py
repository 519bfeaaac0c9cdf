"""Meta-test evaluation on a fixed task set.

Every task is adapted from the meta-parameters with the algorithm's meta-test
procedure (`Algorithm.test_adapt`) and scored on its query set. Results are
reported as mean and 95% interval over tasks (1.96 * std / sqrt(n)), in
percent for accuracy (MSE for regression).
"""

import math
import time

import numpy as np
import tensorflow as tf


def ci95(values):
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return 0.0
    return float(1.96 * values.std() / math.sqrt(values.size))


def summarize(kind, per_task, num_steps, extra=None):
    """The JSON-able result of an evaluation."""
    per_task = np.asarray(per_task, np.float64)
    if kind == "classification":
        out = {
            "accuracy_mean": float(per_task.mean() * 100.0),
            "accuracy_ci95": ci95(per_task * 100.0),
        }
    else:
        out = {"mse_mean": float(per_task.mean()), "mse_ci95": ci95(per_task)}
    out.update({"num_tasks": int(per_task.size), "inner_steps": int(num_steps)})
    out.update(extra or {})
    return out


class Evaluator:
    """Adapts to every task of a fixed set and records the query metric.

    The per-batch function is traced once and reused for every evaluation
    (validation during training, the final test).

    Args:
      algorithm: the `Algorithm` (its `test_adapt` is the meta-test procedure).
      kind: "classification" or "regression".
      jit_compile: compile the evaluation step with XLA.
    """

    def __init__(self, algorithm, kind, jit_compile=False):
        self.algorithm = algorithm
        self.kind = kind
        self._fn = tf.function(self._batch, jit_compile=jit_compile, reduce_retracing=True)

    def _batch(self, tasks):
        batch = tf.shape(tasks["support_x"])[0]

        def body(b, metrics, losses):
            task = {k: tf.gather(v, b) for k, v in tasks.items()}
            result = self.algorithm.test_adapt(task)
            return b + 1, metrics.write(b, result.query_metrics[-1]), losses.write(b, result.query_losses[-1])

        _, metrics, losses = tf.while_loop(
            lambda b, *_: b < batch,
            body,
            (tf.constant(0), tf.TensorArray(tf.float32, batch), tf.TensorArray(tf.float32, batch)),
            parallel_iterations=1,
        )
        return metrics.stack(), losses.stack()

    def run(self, source, num_tasks, batch_size=10):
        """Evaluates tasks 0..num_tasks-1 of `source`; returns (summary, per-task metrics)."""
        start = time.time()
        per_task, losses = [], []
        for tasks in source.eval_dataset(num_tasks, batch_size):
            metric, loss = self._fn(tasks)
            per_task.append(metric.numpy())
            losses.append(loss.numpy())
        per_task = np.concatenate(per_task)[:num_tasks]
        losses = np.concatenate(losses)[:num_tasks]
        summary = summarize(
            self.kind,
            per_task,
            self.algorithm.eval_steps,
            {"loss_mean": float(losses.mean()), "seconds": round(time.time() - start, 2)},
        )
        return summary, per_task
