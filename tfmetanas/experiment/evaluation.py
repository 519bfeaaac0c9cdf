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
from absl import logging

from tfmetanas import compiled, memory


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
      trim_interval: see `tfmetanas.memory.FirstCallTrimmed` (0: off).

    Tasks of a batch run as many at once as the meta-learner's
    ``parallel_tasks`` (``meta.parallel_tasks``); results do not depend on it.
    """

    def __init__(self, algorithm, kind, jit_compile=False, trim_interval=memory.DEFAULT_INTERVAL):
        self.algorithm = algorithm
        self.kind = kind
        self._fn = compiled.step(self._batch, jit_compile, trim_interval, reduce_retracing=True)

    def release(self):
        """Lets the evaluation graphs go (`compiled.Step.release`); the evaluator
        cannot run afterwards."""
        self._fn.release()

    def _batch(self, tasks):
        batch = tf.shape(tasks["support_x"])[0]
        # What `Algorithm.record` keeps per task (METANAS: the adapted architecture).
        record_spec = self.algorithm.record_spec()

        def body(b, metrics, losses, records):
            task = {k: tf.gather(v, b) for k, v in tasks.items()}
            result = self.algorithm.test_adapt(task)
            records = tf.nest.map_structure(
                lambda ta, t: ta.write(b, t), records, self.algorithm.record(result)
            )
            return (b + 1, metrics.write(b, result.query_metrics[-1]),
                    losses.write(b, result.query_losses[-1]), records)

        _, metrics, losses, records = tf.while_loop(
            lambda b, *_: b < batch,
            body,
            (
                tf.constant(0),
                tf.TensorArray(tf.float32, batch),
                tf.TensorArray(tf.float32, batch),
                tf.nest.map_structure(
                    lambda s: tf.TensorArray(s.dtype, batch, element_shape=s.shape), record_spec
                ),
            ),
            parallel_iterations=self.algorithm.meta_learner.parallel_tasks,
        )
        return metrics.stack(), losses.stack(), tf.nest.map_structure(lambda ta: ta.stack(), records)

    def run(self, source, num_tasks, batch_size=10):
        """Evaluates tasks 0..num_tasks-1 of `source`; returns (summary, per-task metrics).

        What the algorithm records per task (`Algorithm.record`) is left in
        `self.records` (``{name: array [num_tasks, ...]}``), and the entries
        of `Algorithm.summarize_records` join the summary; its per-task lines
        are left in `self.record_lines`.
        """
        start = time.time()
        per_task, losses, records = [], [], []
        for tasks in source.eval_dataset(num_tasks, batch_size):
            metric, loss, record = self._fn(tasks)
            per_task.append(metric.numpy())
            losses.append(loss.numpy())
            records.append(tf.nest.map_structure(lambda t: t.numpy(), record))
            done = min(sum(len(m) for m in per_task), num_tasks)
            logging.log_every_n_seconds(
                logging.INFO, "Evaluated %d/%d tasks in %.0f s.", 60, done, num_tasks,
                time.time() - start)
        per_task = np.concatenate(per_task)[:num_tasks]
        losses = np.concatenate(losses)[:num_tasks]
        self.records = {
            k: np.concatenate([r[k] for r in records])[:num_tasks] for k in (records[0] if records else {})
        }
        extra, self.record_lines = (
            self.algorithm.summarize_records(self.records) if self.records else ({}, [])
        )
        summary = summarize(
            self.kind,
            per_task,
            self.algorithm.eval_steps,
            {"loss_mean": float(losses.mean()), "seconds": round(time.time() - start, 2), **extra},
        )
        return summary, per_task
