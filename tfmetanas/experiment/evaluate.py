"""Evaluation of a trained workdir: restore, meta-test, write eval_<split>.json."""

import os

from tfmetanas import errors, memory
from tfmetanas.experiment import evaluation, trainer
from tfmetanas.experiment import workdir as workdir_lib


def checked_num_tasks(num_tasks, config):
    """`num_tasks`, or the run's ``eval.num_tasks`` when None; at least 1."""
    if num_tasks is not None:
        if int(num_tasks) < 1:
            raise errors.ConfigError(f"--num_tasks must be >= 1, got {num_tasks}.")
        return int(num_tasks)
    if int(config.eval.num_tasks) < 1:
        raise errors.ConfigError(
            f"The run's eval.num_tasks is {config.eval.num_tasks}; pass --num_tasks >= 1.")
    return int(config.eval.num_tasks)


def evaluate_workdir(workdir, split="test", num_tasks=None, checkpoint="best", steps=None,
                     data_root=None):
    """Meta-tests the run in `workdir` on `num_tasks` fixed tasks of `split`.

    Returns:
      The result dict also written to ``workdir/eval_<split>.json``: num_tasks,
      accuracy_mean/accuracy_ci95 in percent (or mse_mean/mse_ci95), inner
      steps, the checkpoint path and which checkpoint was asked for.
    """
    config = workdir_lib.load_config(workdir)
    workdir_lib.find_checkpoint(workdir, checkpoint)  # Before any data is loaded.
    with config.unlocked():
        if data_root is not None:
            config.data.root = data_root
        if steps is not None:
            if int(steps) < 1:
                raise errors.ConfigError(f"--steps must be >= 1, got {steps}.")
            config.inner.eval_steps = int(steps)
    num_tasks = checked_num_tasks(num_tasks, config)
    exp = trainer.Experiment(config, splits=(split,))
    path = workdir_lib.restore(workdir, exp.checkpoint, checkpoint)
    evaluator = evaluation.Evaluator(exp.algorithm, exp.kind,
                                     trim_interval=memory.configured_interval(config.train))
    summary, _ = evaluator.run(exp.sources[split], num_tasks, int(config.eval.get("batch_size", 10)))
    summary.update({"split": split, "checkpoint": checkpoint, "checkpoint_path": path,
                    "step": int(exp.step.numpy()), "bn_mode": config.inner.get("bn_mode", "transductive"),
                    "protocol": "single_checkpoint"})
    if evaluator.record_lines:  # METANAS: the pruned genotype of every task.
        workdir_lib.write_jsonl_atomic(
            os.path.join(workdir, f"genotypes_{split}.jsonl"), evaluator.record_lines
        )
    workdir_lib.write_json_atomic(os.path.join(workdir, f"eval_{split}.json"), summary)
    return summary


def format_result(result):
    if "accuracy_mean" in result:
        head = f"accuracy {result['accuracy_mean']:.2f}% +- {result['accuracy_ci95']:.2f}"
    else:
        head = f"MSE {result['mse_mean']:.4f} +- {result['mse_ci95']:.4f}"
    return (f"{result['split']}: {head} (95% CI) over {result['num_tasks']} tasks, "
            f"{result['inner_steps']} inner steps, checkpoint {result['checkpoint_path']}")
