"""The meta-training loop: state, checkpoints, summaries, evaluation schedule.

`train(config, workdir)` is what `tfmetanas-train` calls; tests call it
directly. It reads top to bottom in phases: strategy and workdir, model and
algorithm, checkpoint restore, input pipeline, step function, loop, final
validation. The strategy is ``train.distribute`` (`distribute.make_strategy`);
under several workers only the chief writes into the workdir.
"""

import gc
import json
import math
import os
import time
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from absl import logging

from tfmetanas import compiled, errors, memory
from tfmetanas import data as data_lib
from tfmetanas.experiment import distribute, evaluation
from tfmetanas.experiment import workdir as workdir_lib
from tfmetanas.meta import algorithms, replicas
from tfmetanas.models import params as params_lib
from tfmetanas.models import zoo


def data_root(config):
    """`data.root`, else $TFMETANAS_DATA_DIR, else ''."""
    root = config.data.get("root", "") or os.environ.get("TFMETANAS_DATA_DIR", "")
    return root


def data_config_for(config, split):
    """The data section for one split: root resolved, `train_shots` applied to train."""
    data_config = config.data.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.root = data_root(config)
        if split == "train" and int(data_config.get("train_shots", 0) or 0) > 0:
            data_config.shots = int(data_config.train_shots)
    return data_config


def validate(config, strategy=None):
    """Checks the values every training config shares, before anything runs.

    Args:
      config: the training config.
      strategy: the run's `tf.distribute.Strategy` (default: the current one);
        the meta-batch must split evenly over its replicas.
    """
    for key in ("data", "model", "inner", "meta", "train", "eval"):
        if key not in config:
            raise errors.ConfigError(f"The config has no '{key}' section.")
    if int(config.train.steps) < 0:
        raise errors.ConfigError(f"train.steps must be >= 0, got {config.train.steps}.")
    if int(config.meta.meta_batch_size) < 1:
        raise errors.ConfigError(
            f"meta.meta_batch_size must be >= 1, got {config.meta.meta_batch_size}."
        )
    # Counts whose 0 means "the default" or "never", and counts that need one.
    at_least = {"train.eval_every": 0, "train.log_every": 0, "train.checkpoint_every": 0,
                "train.keep_best": 0, "train.time_limit_minutes": 0, "inner.steps": 1,
                "inner.eval_steps": 1, "eval.num_tasks": 1, "eval.num_val_tasks": 1,
                "data.image_size": 1, "model.filters": 1}
    for key, low in at_least.items():
        section, name = key.split(".")
        value = config[section].get(name)
        if value is not None and float(value) < low:
            raise errors.ConfigError(f"{key} must be >= {low}, got {value}.")
    if not 0 <= int(config.train.seed) < 2**32:
        raise errors.ConfigError(f"train.seed must be in [0, 2**32), got {config.train.seed}.")
    distribute.check_meta_batch(config, strategy or tf.distribute.get_strategy())


class Experiment:
    """Everything a run builds from its config: sources, model, algorithm, checkpoint.

    Shared by training, evaluation and export so they build the same objects.
    Variables are created under `strategy` (default: the current strategy,
    i.e. none for evaluation and export); a checkpoint holds one value per
    variable whatever the strategy, so any run restores into any other.
    """

    def __init__(self, config, splits=("train", "val"), strategy=None):
        self.config = config
        distribute.configure_threads(config)
        compiled.configure_graph_optimizer(config.train)
        seed = int(config.train.seed)
        self.sources = {
            s: data_lib.get_task_source(data_config_for(config, s), s, seed) for s in splits
        }
        probe = self.sources[splits[0]]
        self.kind = probe.kind
        self.input_shape = tuple(probe.input_shape)
        self.output_dim = int(probe.output_dim)
        self.strategy = strategy or tf.distribute.get_strategy()
        with self.strategy.scope():
            self.model = zoo.build_model(config.model, self.input_shape, self.output_dim, seed=seed)
            self.fmodel = params_lib.FunctionalModel(self.model)
            self.algorithm = algorithms.build_algorithm(config, self.fmodel, self.kind)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.best_metric = tf.Variable(np.nan, dtype=tf.float32, trainable=False, name="best")
            self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="seconds")
            self.algorithm.meta_learner.build()
        # Variables are checkpointed by path, not through Keras' object graph:
        # TF's checkpoint does not follow layers held in Python lists (conv
        # blocks, MLP layers), which would silently drop them.
        self.checkpoint = tf.train.Checkpoint(
            model_variables={v.path: v for v in self.model.variables},
            step=self.step,
            best_metric=self.best_metric,
            train_seconds=self.train_seconds,
            **self.algorithm.trackables,
        )

    def higher_is_better(self):
        return self.kind == "classification"

    def metric_of(self, summary):
        return summary["accuracy_mean"] if self.kind == "classification" else summary["mse_mean"]


def _scalars(writer, step, values):
    if writer is None:  # a non-chief worker writes no summaries
        return
    with writer.as_default(step=step):
        for name, value in values.items():
            value = np.asarray(value)
            if value.ndim == 0:
                tf.summary.scalar(name, float(value))
            else:
                for j, v in enumerate(value.reshape(-1)):
                    tf.summary.scalar(f"{name}/step_{j}", float(v))


def _learning_rates(algorithm, step):
    """Outer learning rates; the inner ones (LSLR, ALFA) come from `Algorithm.scalars`."""
    out = {}
    for name, opt in algorithm.meta_learner.optimizers.items():
        lr = opt.learning_rate
        # A constant rate is a Keras variable (a MirroredVariable under a
        # strategy, which `float` refuses): read it as a tensor.
        out[f"lr/outer/{name}"] = float(lr(step) if callable(lr) else tf.convert_to_tensor(lr))
    return out


def train(config, workdir):
    """Meta-trains `config` in `workdir`; resumes from its checkpoint if any.

    Returns:
      The last validation summary (or {} when no validation ran).
    """
    summary, _ = run(config, workdir)
    return summary


def run(config, workdir):
    """`train`, also returning the `Experiment` (this process's final variables).

    Returns:
      (last validation summary, Experiment).
    """
    # Strategy, workdir and config: refuse a workdir that holds another run
    # before anything is built or written. Only the chief writes into the
    # workdir; other workers save their (identical) checkpoints to a scratch
    # directory they delete, and write no summaries, curves or config.
    distribute.configure_threads(config)
    compiled.configure_graph_optimizer(config.train)
    strategy = distribute.make_strategy(config)
    validate(config, strategy)
    chief = distribute.is_chief(strategy)
    # Checked now, written once the data is built and the checkpoint restored:
    # a run that fails before that leaves the workdir as it was.
    workdir_lib.prepare_workdir(workdir, config, write=False)
    scratch = distribute.WorkerScratch(strategy)
    try:
        return _train(config, workdir, strategy, chief, scratch)
    finally:
        scratch.cleanup()


def _train(config, workdir, strategy, chief, scratch):
    steps = int(config.train.steps)
    batch = int(config.meta.meta_batch_size)
    eval_every = int(config.train.get("eval_every", 0) or 0)
    log_every = max(int(config.train.get("log_every", 50) or 50), 1)
    ckpt_every = int(config.train.get("checkpoint_every", 0) or eval_every or steps or 1)
    keep_best = int(config.train.get("keep_best", 1) or 1)
    # A wall-clock budget (minutes, 0: none): the run stops cleanly at the
    # first step past it, validates and checkpoints, as if train.steps ended there.
    time_limit = 60.0 * float(config.train.get("time_limit_minutes", 0) or 0)

    # Model, algorithm, checkpoints. Every worker restores the workdir's
    # checkpoint (a shared filesystem for several machines); it holds one
    # value per variable, so it was possibly written on another device count.
    exp = Experiment(config, strategy=strategy)
    save_dir = scratch.workdir(workdir)
    latest = workdir_lib.checkpoint_manager(save_dir, exp.checkpoint, "latest")
    best = workdir_lib.checkpoint_manager(save_dir, exp.checkpoint, "best", max_to_keep=keep_best)
    if workdir_lib.has_checkpoint(workdir):
        path = workdir_lib.restore(workdir, exp.checkpoint, "latest")
        logging.info("Resumed from %s at step %d.", path, int(exp.step.numpy()))
    workdir_lib.prepare_workdir(workdir, config, write=chief)
    start = int(exp.step.numpy())
    writers = workdir_lib.summary_writers(workdir) if chief else {"train": None, "eval": None}

    # Input pipeline: task i of the stream is a pure function of (seed, i),
    # and global step s holds tasks s*B .. s*B + B - 1, each replica its
    # contiguous slice, so a run resumed at step `start` (on any number of
    # replicas) continues the identical stream.
    train_source, val_source = exp.sources["train"], exp.sources["val"]
    iterator = iter(distribute.task_dataset(strategy, train_source, start, batch))

    # The meta-step: one tf.function per distinct `Algorithm.step_options`
    # (derivative order for MAML++'s DA, adapted groups for METANAS'
    # warm-up); each traces once.
    jit = bool(config.train.get("jit_compile", False))
    check_xla(config, jit)
    algorithm = exp.algorithm

    def make_step(options):
        def replica(tasks, iteration):
            metrics = algorithm.meta_learner.replica_step(tasks, iteration, **dict(options))
            # Replicas hold equally many tasks: the mean of their means is the
            # mean over the global meta-batch. Reduced in the replica context
            # (`strategy.reduce` refuses MultiWorkerMirroredStrategy's plain
            # per-worker tensors), so every replica returns the same values.
            return replicas.all_reduce_mean(metrics)

        def step_fn(tasks, iteration):
            per_replica = exp.strategy.run(replica, args=(tasks, iteration))
            return exp.strategy.experimental_local_results(per_replica)[0]

        return compiled.step(step_fn, jit, trim_interval)

    trim_interval = memory.configured_interval(config.train)
    step_fns = {}
    evaluator = evaluation.Evaluator(algorithm, exp.kind, jit_compile=False,
                                     trim_interval=trim_interval)
    try:
        num_eval_tasks = int(config.eval.get("num_val_tasks", config.eval.num_tasks))

        def validate_and_checkpoint(step):
            # Every worker validates (outside the strategy, on its own copy of the
            # identical variables), so all take the same best/latest decisions
            # and call `save` at the same points; only the chief records.
            summary, _ = evaluator.run(val_source, num_eval_tasks, int(config.eval.get("batch_size", 10)))
            _scalars(writers["eval"], step, {"val/" + k: v for k, v in summary.items()
                                              if isinstance(v, (int, float))})
            metric = exp.metric_of(summary)
            if chief:
                with open(os.path.join(workdir, "val_curve.jsonl"), "a") as f:
                    f.write(json.dumps({"step": step,
                                        "train_seconds": round(time.time() - t0 + elapsed0, 1),
                                        **summary}) + "\n")
            prev = float(exp.best_metric.numpy())
            improved = math.isnan(prev) or (metric > prev if exp.higher_is_better() else metric < prev)
            if improved:
                exp.best_metric.assign(metric)
                best.save(checkpoint_number=step)
            latest.save(checkpoint_number=step)
            logging.info("step %d validation: %s%s", step, summary, " (best)" if improved else "")
            return summary

        # The loop.
        last_summary = {}
        elapsed0 = float(exp.train_seconds.numpy())
        t0, last_log, last_log_step = time.time(), time.time(), start
        for step in range(start, steps):
            options = tuple(sorted(algorithm.step_options(step).items()))
            compiles = options not in step_fns
            if compiles:
                # Step options only move forward (MAML++'s DA, METANAS' warm-up): a new
                # meta-step supersedes the previous one, whose graphs are let go.
                _release_steps(step_fns)
                step_fns[options] = make_step(options)
            tasks = next(iterator)
            began = time.time()
            metrics = step_fns[options](tasks, tf.constant(step, tf.int64))
            loss = float(metrics["meta/loss"])
            if compiles:
                # A new meta-step (the first, or a phase's: MAML++'s DA, METANAS'
                # warm-up) is traced and compiled in its first call.
                seconds = time.time() - began
                logging.info("Step %d: first call of the meta-step for %s (tracing, compiling, "
                             "running): %.1f s.", step + 1, dict(options), seconds)
                _scalars(writers["train"], step + 1, {"train/first_step_seconds": seconds})
            if not math.isfinite(loss):
                raise errors.NonFiniteLossError(
                    f"Non-finite meta-loss {loss} at step {step}. The last good checkpoint in "
                    f"{workdir}/checkpoints is untouched; lower meta.lr or inner.lr and resume."
                )
            exp.step.assign(step + 1)
            exp.train_seconds.assign(time.time() - t0 + elapsed0)
            done = step + 1
            if done % log_every == 0 or done == steps:
                values = {k: v.numpy() for k, v in metrics.items()}
                values.update(_learning_rates(algorithm, step))
                values.update(algorithm.scalars(step))
                values["meta/param_norm"] = float(
                    tf.linalg.global_norm(algorithm.meta_learner.variables or [tf.zeros([])])
                )
                _scalars(writers["train"], done, values)
                rate = (done - last_log_step) / max(time.time() - last_log, 1e-9)
                eta = (steps - done) / max(rate, 1e-9)
                line = (
                    f"step {done}/{steps}  {rate:.2f} it/s  ETA {eta / 60:.1f} min  "
                    f"loss {loss:.4f}  query {np.asarray(values['query/metric'])[-1]:.4f}"
                )
                if config.train.get("progress", True) and chief:
                    print(line, flush=True)
                else:
                    logging.info("%s", line)
                last_log, last_log_step = time.time(), done
            if eval_every and done % eval_every == 0:
                last_summary = validate_and_checkpoint(done)
            elif done % ckpt_every == 0:
                latest.save(checkpoint_number=done)
            # Workers stop together: one that left the loop alone would leave the
            # others waiting in the next step's all-reduce.
            if time_limit and distribute.any_worker(
                strategy, time.time() - t0 + elapsed0 >= time_limit
            ):
                logging.info("Stopping at step %d: train.time_limit_minutes reached.", done)
                break

        # Final validation and checkpoint (if the last step did not already).
        final = int(exp.step.numpy())
        if not (eval_every and final % eval_every == 0 and final > start):
            last_summary = validate_and_checkpoint(final)
        for w in writers.values():
            if w is not None:
                w.flush()
        logging.info("Trained %d steps in %.1f s.", final - start, time.time() - t0)
    finally:
        # For callers that train several runs in one process (tests, studies, notebooks),
        # also when the run stops on an error.
        evaluator.release()
        _release_steps(step_fns)
    return last_summary, exp


class FixedBatchStep(NamedTuple):
    """A compiled step on one fixed batch (`fixed_batch_step`).

    Attributes:
      step: the `tf.function`; ``step(*args)`` returns ``{"meta/loss": ...}``.
      args: its arguments for the first call.
      call: ``call(i)`` runs the i-th call (a meta-step gets iteration i); the
        first call hands freed memory back as training does
        (``train.trim_interval``, `tfmetanas.memory`).
      inner_steps: inner steps per task.
      second_order: whether the meta-gradient is second order.
    """

    step: object
    args: tuple
    call: object
    inner_steps: int
    second_order: bool


def fixed_batch_step(experiment, mode="meta_step", iteration=0, second_order=None,
                     jit_compile=False, meta_batch_size=None):
    """The step a run repeats, compiled, on one fixed batch: what benchmarks and profiles time.

    Args:
      experiment: an `Experiment` with the split the mode reads (``train`` for
        ``meta_step``, ``test`` for ``meta_test``).
      mode: ``"meta_step"``, the meta-learner's step on one meta-batch with the
        step options of `iteration`; ``"meta_test"``, `test_adapt` of one task.
      iteration: whose step options (warm-up, derivative order annealing).
      second_order: overrides the options' derivative order (None: keep).
      jit_compile: compile with XLA.
      meta_batch_size: tasks per meta-batch (default: the config's).

    Returns:
      A `FixedBatchStep`.
    """
    algorithm = experiment.algorithm
    interval = memory.configured_interval(experiment.config.train)
    if mode == "meta_test":
        tasks = next(iter(experiment.sources["test"].eval_dataset(1, 1)))
        task = {k: v[0] for k, v in tasks.items()}

        @compiled.function(jit_compile=jit_compile)
        def step(task):
            return {"meta/loss": algorithm.test_adapt(task).query_losses[-1]}

        trimmed = memory.FirstCallTrimmed(step, interval)
        return FixedBatchStep(step, (task,), lambda i: trimmed(task), int(algorithm.eval_steps),
                              False)
    if mode != "meta_step":
        raise errors.ConfigError(f"Unknown step mode {mode!r}: meta_step or meta_test.")
    batch = int(meta_batch_size or experiment.config.meta.meta_batch_size)
    tasks = next(iter(experiment.sources["train"].dataset(0, batch)))
    options = algorithm.step_options(iteration)
    if second_order is not None:
        options["second_order"] = bool(second_order)

    @compiled.function(jit_compile=jit_compile)
    def step(tasks, iteration):
        return algorithm.meta_learner.replica_step(tasks, iteration, **options)

    trimmed = memory.FirstCallTrimmed(step, interval)
    return FixedBatchStep(step, (tasks, tf.constant(0, tf.int64)),
                          lambda i: trimmed(tasks, tf.constant(i, tf.int64)),
                          int(algorithm.learner.inner_steps), bool(options["second_order"]))


def _release_steps(step_fns):
    """Releases the compiled steps in the dict `step_fns` and empties it.

    Their traced and instantiated graphs (hundreds of MB for a METANAS step)
    would otherwise stay for the rest of the run (`compiled.Step`). Options that
    came back would trace their step again.
    """
    if not step_fns:
        return
    for options, step in step_fns.items():
        step.release()
        logging.info("Released the meta-step for %s.", dict(options))
    step_fns.clear()
    gc.collect()


def check_xla(config, jit_compile):
    """Refuses compiled combinations where XLA's meta-gradients are wrong.

    XLA lowers `MaxPoolGradGrad` on bf16-rounded inputs, which makes
    second-order meta-gradients through max-pooling off by percents (DESIGN.md;
    tests/meta/xla_test.py measures it). Use the strided conv4 variant, first
    order, or jit_compile=False.
    """
    if not jit_compile:
        return
    model = config.model
    uses_max_pool = model.get("name", "conv4") in ("conv4", "resnet12") and (
        model.get("downsample", "max_pool") == "max_pool"
    )
    if uses_max_pool and bool(config.meta.get("second_order", False)):
        raise errors.ConfigError(
            "train.jit_compile=True with second-order meta-gradients through max-pooling is "
            "refused: XLA's MaxPoolGradGrad rounds to bf16 and the meta-gradients come out wrong "
            "by percents. Set train.jit_compile=False, meta.second_order=False, or "
            "model.downsample='strided'."
        )
