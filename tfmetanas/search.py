r"""Supernet training, ranking and evolutionary search (SUMNAS, Ha et al., ICLR 2022).

Stages (``--stages=train,rank,search``, any subset, in this order):

- ``train``: trains a weight-sharing supernet (NAS-Bench-201 or MobileNet
  space) with SPOS, FairNAS or SUMNAS on supervised batches (Section 3);
  checkpoints in the workdir, resumes automatically. ``train.distribute``
  (as in meta-training) splits the m sub-models of a FairNAS/SUMNAS step
  over replicas.
- ``rank``: evaluates sampled sub-models with BN recalibration and reports
  Kendall tau / Spearman rho against a reference (the NAS-Bench-201 table, or
  the JSON of ``tools/standalone_reference.py``) into ``rank.json``
  (Section 5.1, Table 4).
- ``search``: evolutionary search (Algorithm 2) scored by the supernet under a
  MACs budget; writes ``search.json``.

  python -m tfmetanas.search --config=configs/nb201/sumnas.py --workdir=/tmp/sumnas
"""

import gc
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfmetanas import cli, compiled, errors, memory
from tfmetanas.experiment import distribute
from tfmetanas.experiment import workdir as workdir_lib
from tfmetanas.meta import sumnas
from tfmetanas.nas import evolution, flops, mobilenet, nb201, oracle, ranking, supervised_data
from tfmetanas.nas import supernet as sn
from tfmetanas.registry import Registry

STAGES = ("train", "rank", "search")
SPACES = Registry("search space")


@SPACES.register("nb201")
def _nb201(config, num_classes, channels):
    m = config.model
    return nb201.build_supernet(num_classes, channels=m.channels,
                                cells_per_stage=m.cells_per_stage,
                                image_size=config.data.image_size, in_channels=channels,
                                selection=m.selection, bn_momentum=m.bn_momentum)


@SPACES.register("mobilenet")
def _mobilenet(config, num_classes, channels):
    m = config.model
    return mobilenet.build_supernet(num_classes, width_multiplier=m.width_multiplier,
                                    image_size=config.data.image_size, in_channels=channels,
                                    selection=m.selection, bn_momentum=m.bn_momentum)


def _check_config(config):
    t = config.train
    if t.strategy not in sumnas.STRATEGIES:
        raise errors.ConfigError(f"train.strategy={t.strategy!r}; valid: {sumnas.STRATEGIES}.")
    for key in ("steps", "batch_size", "eval_every", "log_every", "checkpoint_every"):
        low = 0 if key == "steps" else 1
        if int(t[key]) < low:
            raise errors.ConfigError(f"train.{key} = {t[key]} must be >= {low}.")
    if int(config.data.image_size) < 1:
        raise errors.ConfigError(f"data.image_size = {config.data.image_size} must be >= 1.")
    if not 0 <= int(t.seed) < 2**32:
        raise errors.ConfigError(f"train.seed must be in [0, 2**32), got {t.seed}.")
    if config.get("search") is not None and config.search.get("method", "evolution") not in (
            "evolution", "random"):
        # Refused before the train and rank stages spend their time.
        raise errors.ConfigError(
            f"search.method={config.search.method!r}; valid: 'evolution', 'random'.")
    if config.model.space not in SPACES:
        SPACES.get(config.model.space)  # raises with the valid names
    if config.model.get("selection") == "gather" and t.jit_compile:
        # XLA needs every convolution's channel counts when it compiles.
        raise errors.ConfigError(
            "model.selection='gather' runs convolutions whose channel counts are known only "
            "when the step runs, which XLA cannot compile: use train.jit_compile=False, or "
            "model.selection='switch' with XLA.")


def _build(config, strategy=None):
    """The data, the supernet and its trainer of `config`.

    Seeds Python's, NumPy's and TensorFlow's global random generators with
    ``train.seed`` (`keras.utils.set_random_seed`) before building the
    supernet, so its initial weights are the seed's.
    """
    data = supervised_data.SupervisedArrays(
        supervised_data.load_class_arrays(config.data, config.train.seed),
        int(config.data.val_per_class), seed=config.train.seed)
    t = config.train
    strategy = strategy or tf.distribute.get_strategy()
    # Variables are created under the strategy: FairNAS/SUMNAS split their
    # sub-models over its replicas (meta/sumnas.py explains the choice).
    with strategy.scope():
        # The supernet's initial weights follow train.seed, as the meta-learners'
        # networks do (zoo.build_model): the same config trains the same run.
        keras.utils.set_random_seed(int(t.seed))
        model = SPACES.get(config.model.space)(config, data.num_classes, data.image_shape[-1])
        trainer = sumnas.SupernetTrainer(
            model, t.strategy, learning_rate=t.learning_rate, total_steps=max(int(t.steps), 1),
            momentum=t.momentum, weight_decay=t.weight_decay, seed=t.seed,
            inner_steps=t.inner_steps, inner_learning_rate=t.inner_learning_rate,
            inner_momentum=t.inner_momentum, fair_reduction=t.fair_reduction,
            jit_compile=t.jit_compile, distribution=strategy,
            trim_interval=memory.configured_interval(t))
    return data, model, trainer


def _evaluator(config, data, model):
    r = config.search.rank
    return sn.SubmodelEvaluator(
        model, data.calibration_batches(r.calibration_batches, r.calibration_batch_size),
        data.val_pixels, data.val_labels, batch_size=r.eval_batch_size)


class _SharedEvaluator:
    """One `SubmodelEvaluator` for every stage of a run, built when first called for.

    Each evaluator traces the supernet's calibration and scoring graphs, and
    TensorFlow keeps a traced graph with batch norms until it is released
    (`compiled.Step`), so a second evaluator would cost its tracing time and
    its graphs' memory again. The calibration batches are fixed, so one
    evaluator gives every stage the numbers a new one would.
    """

    def __init__(self, config, data, model):
        self._args = (config, data, model)
        self._evaluator = None

    def __call__(self):
        if self._evaluator is None:
            self._evaluator = _evaluator(*self._args)
        return self._evaluator

    def release(self):
        if self._evaluator is not None:
            self._evaluator.release()
            self._evaluator = None


def train(config, workdir, data, model, trainer, chief=True, save_dir=None,
          get_evaluator=None):
    """The ``train`` stage; returns the last metrics (floats).

    Under a multi-worker strategy every worker runs it; only the chief writes
    summaries, and the others save their checkpoints under `save_dir` (a
    scratch directory) instead of the workdir. `get_evaluator`: a function
    returning the `SubmodelEvaluator` of the evaluations during training (None:
    one of its own, built at the first).
    """
    get_evaluator = get_evaluator or _SharedEvaluator(config, data, model)
    t = config.train
    checkpoint = tf.train.Checkpoint(**trainer.checkpoint_items())
    manager = workdir_lib.checkpoint_manager(save_dir or workdir, checkpoint)
    if workdir_lib.has_checkpoint(workdir):
        workdir_lib.restore(workdir, checkpoint)
    writers = workdir_lib.summary_writers(workdir) if chief else {}
    metrics, start = {}, time.time()
    step = int(trainer.step.numpy())
    first = step
    while step < int(t.steps):
        images, labels = data.batch(step, int(t.batch_size))
        step_start = time.time()
        metrics = {k: float(v) for k, v in trainer.train_step(images, labels).items()}
        if step == first:
            # This process's first step traces and compiles the training graph:
            # what a run waits for before steps come at their usual rate.
            seconds = time.time() - step_start
            logging.info("First supernet step (tracing, compiling, running): %.1f s.", seconds)
            if chief:
                with writers["train"].as_default(step=step + 1):
                    tf.summary.scalar("train/first_step_seconds", seconds)
        if not np.isfinite(metrics["loss"]):
            # Stop before a checkpoint is written: the last one stays good.
            raise errors.NonFiniteLossError(
                f"Non-finite supernet loss {metrics['loss']} at step {step} ({t.strategy}); lower "
                f"train.learning_rate (now {t.learning_rate}) or train.inner_learning_rate.")
        step += 1
        if chief and (step % int(t.log_every) == 0 or step == int(t.steps)):
            with writers["train"].as_default(step=step):
                for key, value in metrics.items():
                    tf.summary.scalar(f"train/{key}", value)
                tf.summary.scalar("train/steps_per_second", step / max(time.time() - start, 1e-9))
        if chief and (step % int(t.eval_every) == 0 or step == int(t.steps)):
            archs = sn.sample_archs(int(config.search.rank.eval_archs_during_training),
                                    model.num_layers, model.num_choices, seed=t.seed)
            acc = np.mean([r["accuracy"] for r in get_evaluator().evaluate_many(archs)])
            with writers["eval"].as_default(step=step):
                tf.summary.scalar("eval/submodel_accuracy", acc)
        if step % int(t.checkpoint_every) == 0 or step == int(t.steps):
            manager.save(checkpoint_number=step)
    for w in writers.values():
        w.flush()
    return metrics


def _restore_trained(workdir, trainer):
    checkpoint = tf.train.Checkpoint(**trainer.checkpoint_items())
    workdir_lib.restore(workdir, checkpoint)


def _reference(config, archs):
    """Reference accuracies of `archs` (NB201 oracle or a standalone JSON), or None."""
    ref = config.search.rank.reference
    if ref == "none":
        return None
    if ref == "oracle":
        if config.model.space != "nb201":
            raise errors.ConfigError("search.rank.reference='oracle' needs model.space='nb201'.")
        table = oracle.NB201Oracle(config.search.oracle_path or None)
        return [table.accuracy_of(tuple(a), config.search.oracle_dataset) for a in archs]
    import json

    with open(ref) as f:
        entries = {tuple(e["arch"]): e["accuracy_mean"] for e in json.load(f)["archs"]}
    missing = [tuple(a) for a in archs if tuple(a) not in entries]
    if missing:
        raise errors.DataError(f"{ref} has no accuracy for {len(missing)} archs, e.g. {missing[0]}.")
    return [entries[tuple(a)] for a in archs]


def rank(config, workdir, data, model, get_evaluator=None):
    """The ``rank`` stage: supernet accuracy vs reference, written to rank.json.

    `get_evaluator`: as `train`'s (None: a new `SubmodelEvaluator`).
    """
    r = config.search.rank
    if r.reference not in ("oracle", "none") and os.path.exists(r.reference):
        import json

        with open(r.reference) as f:
            archs = np.asarray([e["arch"] for e in json.load(f)["archs"]], np.int32)
    else:
        archs = sn.sample_archs(int(r.num_archs), model.num_layers, model.num_choices,
                                seed=int(r.seed))
    results = (get_evaluator or _SharedEvaluator(config, data, model))().evaluate_many(archs)
    predicted = [x["accuracy"] for x in results]
    out = {"archs": [{"arch": [int(v) for v in a], **res} for a, res in zip(archs, results)]}
    reference = _reference(config, archs)
    if reference is not None:
        for entry, value in zip(out["archs"], reference):
            entry["reference_accuracy"] = value
        out.update(ranking.correlations(predicted, reference))
    workdir_lib.write_json_atomic(os.path.join(workdir, "rank.json"), out)
    return out


def search_stage(config, workdir, data, model, get_evaluator=None):
    """The ``search`` stage: evolution scored by the supernet, written to search.json.

    `get_evaluator`: as `train`'s (None: a new `SubmodelEvaluator`).
    """
    s = config.search
    evaluator = (get_evaluator or _SharedEvaluator(config, data, model))()
    size = int(config.data.image_size)
    constraint = None
    if s.max_macs is not None:
        constraint = lambda a: flops.cost_of(model, a, size).macs <= s.max_macs  # noqa: E731

    def score(arch):
        return evaluator.evaluate(arch)["accuracy"]

    kwargs = dict(constraint=constraint, seed=int(s.seed))
    if s.method == "evolution":
        result = evolution.evolutionary_search(
            score, model.num_layers, model.num_choices, generations=int(s.generations),
            population=int(s.population), offspring=int(s.offspring),
            mutation_prob=float(s.mutation_prob), max_queries=s.max_queries, **kwargs)
    elif s.method == "random":
        result = evolution.random_search(score, model.num_layers, model.num_choices,
                                         num_samples=int(s.max_queries or 100), **kwargs)
    else:
        raise errors.ConfigError(f"search.method={s.method!r}; valid: 'evolution', 'random'.")
    out = result.to_dict()
    cost = flops.cost_of(model, result.best_arch, size)
    out.update(best_macs=cost.macs, best_params=cost.params)
    if config.model.space == "nb201":
        out["best_arch_string"] = nb201.arch_to_string(result.best_arch)
        try:
            table = oracle.NB201Oracle(s.oracle_path or None)
            out["best_oracle_accuracy"] = table.accuracy_of(result.best_arch, s.oracle_dataset)
        except errors.DataError:
            pass  # no benchmark table here: the oracle number is optional
    workdir_lib.write_json_atomic(os.path.join(workdir, "search.json"), out)
    return out


def search(config, workdir, stages=STAGES):
    """Runs the requested stages in `workdir`; returns ``{stage: result}``.

    Args:
      config: an `ml_collections.ConfigDict` (see configs/nb201/*.py).
      workdir: run directory (config.json, checkpoints/, train/, eval/, *.json).
      stages: iterable of "train", "rank", "search".

    References: Ha et al., ICLR 2022, Algorithms 1 and 2.
    """
    stages = [stages] if isinstance(stages, str) else list(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise errors.ConfigError(f"Unknown stages {unknown}; valid: {list(STAGES)}.")
    _check_config(config)
    compiled.configure_graph_optimizer(config.train)  # Refuses bad names before the workdir.
    strategy = distribute.make_strategy(config)
    chief = distribute.is_chief(strategy)
    # Checked now, written once the data and the supernet are built: a run
    # that fails before that leaves the workdir as it was.
    workdir_lib.prepare_workdir(workdir, config, write=False)
    data, model, trainer = _build(config, strategy)
    workdir_lib.prepare_workdir(workdir, config, write=chief)
    results = {}
    evaluator = _SharedEvaluator(config, data, model)
    scratch = distribute.WorkerScratch(strategy)
    try:
        try:
            if "train" in stages:
                results["train"] = train(config, workdir, data, model, trainer, chief=chief,
                                         save_dir=scratch.path, get_evaluator=evaluator)
            elif stages:
                _restore_trained(workdir, trainer)
        finally:
            scratch.cleanup()
            # The training step's graphs are not needed by the stages after it.
            trainer.release()
        # Ranking and search evaluate sub-models one by one outside the strategy:
        # the chief runs them and writes their JSON.
        if chief and "rank" in stages:
            results["rank"] = rank(config, workdir, data, model, evaluator)
        if chief and "search" in stages:
            results["search"] = search_stage(config, workdir, data, model, evaluator)
    finally:
        evaluator.release()  # For callers that run several searches in one process.
        gc.collect()
    return results


def main(argv):
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    stages = [s for s in _FLAGS.stages.split(",") if s]
    if not stages:
        raise app.UsageError(f"--stages names no stage; use some of {','.join(STAGES)}.")
    cli.run_main("tfmetanas-search", search, _FLAGS.config, _FLAGS.workdir, stages)


def run():
    global _FLAGS
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory.")
    flags.DEFINE_string("stages", ",".join(STAGES), "Comma-separated stages: train,rank,search.")
    flags.mark_flags_as_required(["config", "workdir"])
    _FLAGS = flags.FLAGS
    app.run(main, flags_parser=cli.flags_parser("tfmetanas-search"))


_FLAGS = None

if __name__ == "__main__":
    run()
