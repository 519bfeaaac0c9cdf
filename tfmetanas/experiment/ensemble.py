"""The top-k ensemble evaluation protocol of MAML++ (and ALFA, which reuses its code).

Antoniou et al., arXiv:1810.09502, Section 5: the reported test accuracy is
that of an ensemble of the top-5 models by validation accuracy: every test
task is adapted from each model, the query softmax outputs are averaged, and
the ensemble's prediction is scored. The trainer keeps the last
``train.keep_best`` improving checkpoints in ``workdir/checkpoints/best``;
they are the ensemble members. All members see the same fixed test tasks.

For regression the members' predictions are averaged (MSE of the mean).
"""

import os

import numpy as np
import tensorflow as tf

from tfmetanas import compiled, errors
from tfmetanas.experiment import evaluation, trainer
from tfmetanas.experiment import workdir as workdir_lib
from tfmetanas.experiment.evaluate import checked_num_tasks


def best_checkpoints(workdir, k=None):
    """Paths of the kept best-by-validation checkpoints (newest last), at most `k`."""
    if k is not None and int(k) < 1:
        raise errors.ConfigError(f"--k must be >= 1, got {k}.")
    directory = workdir_lib.checkpoint_dir(workdir, "best")
    state = tf.train.get_checkpoint_state(directory)
    paths = list(state.all_model_checkpoint_paths) if state else []
    if not paths:
        raise errors.CheckpointError(
            f"No best-by-validation checkpoints in {directory}: train with validation "
            "(train.eval_every > 0 or the final validation) first."
        )
    paths = [p if os.path.isabs(p) else os.path.join(directory, p) for p in paths]
    return paths[-int(k):] if k is not None else paths


class EnsemblePredictor:
    """Per-task query outputs of one restored model, traced once and reused for every member.

    Args:
      algorithm: the `Algorithm` (its `test_adapt` is the meta-test procedure).
      kind: "classification" (softmax probabilities) or "regression" (predictions).
    """

    def __init__(self, algorithm, kind):
        self.algorithm = algorithm
        self.kind = kind
        self._fn = compiled.function(self._batch, reduce_retracing=True)

    def _batch(self, tasks):
        batch = tf.shape(tasks["support_x"])[0]

        def body(b, outputs):
            task = {k: tf.gather(v, b) for k, v in tasks.items()}
            out = self.algorithm.test_adapt(task).query_outputs
            if self.kind == "classification":
                out = tf.nn.softmax(out)
            return b + 1, outputs.write(b, out)

        _, outputs = tf.while_loop(
            lambda b, *_: b < batch,
            body,
            (tf.constant(0), tf.TensorArray(tasks["query_x"].dtype, batch)),
            parallel_iterations=1,
        )
        return outputs.stack()

    def predict(self, source, num_tasks, batch_size):
        """Outputs [num_tasks, queries, outputs] and labels [num_tasks, queries(, 1)]."""
        outputs, labels = [], []
        for tasks in source.eval_dataset(num_tasks, batch_size):
            outputs.append(self._fn(tasks).numpy())
            labels.append(tasks["query_y"].numpy())
        return np.concatenate(outputs)[:num_tasks], np.concatenate(labels)[:num_tasks]


def score(kind, mean_outputs, labels):
    """Per-task accuracy of averaged probabilities, or MSE of averaged predictions."""
    if kind == "classification":
        return (mean_outputs.argmax(-1) == labels).mean(-1)
    return ((mean_outputs - labels) ** 2).reshape(len(labels), -1).mean(-1)


def ensemble_evaluate(restore_fn, checkpoints, predictor, source, num_tasks, batch_size=10):
    """Averages the members' outputs over the same tasks; returns (per-task metric, per-member metric).

    Args:
      restore_fn: ``path -> None``, restores one member into the predictor's model.
      checkpoints: the members' checkpoint paths.
      predictor: an `EnsemblePredictor`.
      source: a task source with ``eval_dataset(num_tasks, batch_size)``.
      num_tasks, batch_size: the fixed test tasks and tasks per call.

    Returns:
      ``(per_task, members)``: the ensemble's per-task metric and each
      member's mean metric (for the JSON, to show what the ensemble adds).
    """
    total, labels, members = None, None, []
    for path in checkpoints:
        restore_fn(path)
        outputs, labels = predictor.predict(source, num_tasks, batch_size)
        members.append(float(score(predictor.kind, outputs, labels).mean()))
        total = outputs.astype(np.float64) if total is None else total + outputs
    return score(predictor.kind, total / len(checkpoints), labels), members


def evaluate_ensemble(workdir, split="test", num_tasks=None, k=None, steps=None, data_root=None):
    """Meta-tests the top-k ensemble of a run on the fixed tasks of `split`.

    Args:
      workdir: a trained workdir whose ``checkpoints/best`` holds the members.
      split: the split to evaluate.
      num_tasks: fixed tasks (default ``eval.num_tasks``).
      k: members (default: every kept best checkpoint, i.e. ``train.keep_best``).
      steps: inner steps at meta-test (default ``inner.eval_steps``).
      data_root: overrides ``data.root``.

    Returns:
      The dict written to ``workdir/eval_<split>_ensemble.json``: the fields of
      `tfmetanas.experiment.evaluate.evaluate_workdir` plus ``protocol =
      "ensemble_top_k"``, ``k``, ``member_checkpoints`` and ``member_metrics``.

    References: arXiv:1810.09502, Section 5 (top-5 ensemble).
    """
    config = workdir_lib.load_config(workdir)
    checkpoints = best_checkpoints(workdir, k)
    with config.unlocked():
        if data_root is not None:
            config.data.root = data_root
        if steps is not None:
            if int(steps) < 1:
                raise errors.ConfigError(f"--steps must be >= 1, got {steps}.")
            config.inner.eval_steps = int(steps)
    num_tasks = checked_num_tasks(num_tasks, config)
    exp = trainer.Experiment(config, splits=(split,))

    def restore(path):
        try:
            exp.checkpoint.restore(path).expect_partial()
        except (tf.errors.OpError, ValueError, AssertionError) as e:
            raise errors.CheckpointError(
                f"The checkpoint {path} does not fit this config's model ({e.__class__.__name__})."
            ) from e

    predictor = EnsemblePredictor(exp.algorithm, exp.kind)
    per_task, members = ensemble_evaluate(
        restore, checkpoints, predictor, exp.sources[split], num_tasks,
        int(config.eval.get("batch_size", 10)),
    )
    summary = evaluation.summarize(exp.kind, per_task, exp.algorithm.eval_steps)
    summary.update({
        "split": split, "checkpoint": "best", "checkpoint_path": checkpoints[-1],
        "step": int(exp.step.numpy()), "bn_mode": config.inner.get("bn_mode", "transductive"),
        "protocol": "ensemble_top_k", "k": len(checkpoints),
        "member_checkpoints": checkpoints,
        "member_metrics": [m * 100.0 if exp.kind == "classification" else m for m in members],
    })
    # Beside, not over, the single-checkpoint result: both protocols are reported.
    workdir_lib.write_json_atomic(os.path.join(workdir, f"eval_{split}_ensemble.json"), summary)
    return summary
