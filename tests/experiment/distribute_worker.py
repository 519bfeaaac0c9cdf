"""Runs meta-training under tf.distribute in a fresh process; used by distribute_test.py.

Logical devices must be configured before TensorFlow initialises, which the
pytest process has already done, so the tests start this script:

  distribute_worker.py equivalence OUT.json WORKDIR ALGO [ALGO ...]
      two logical CPUs; per algorithm: one meta-step with train.distribute=none
      and one with 'mirrored' over both CPUs on the same global meta-batch;
      writes the largest differences and how far the step moved the parameters.
  distribute_worker.py resume OUT.json WORKDIR
      two logical CPUs; 2 steps on 2 replicas then 2 more on 1 (and the
      reverse) against 4 uninterrupted steps on 1 replica.
  distribute_worker.py supernet OUT.json
      two logical CPUs; FairNAS and SUMNAS steps on the toy supernet with the
      sub-models split over 2 replicas vs 1 device.
  distribute_worker.py train OUT.npz WORKDIR STEPS DISTRIBUTE
      trains `tiny_config` (TF_CONFIG from the environment for multi_worker)
      and writes the final variables and step.

Everything here is deliberately small (glyphs 3-way 1-shot at 14 px, 4-filter
conv4) so a test stays in seconds.
"""

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from tfmetanas.experiment import defaults, trainer  # noqa: E402
from tfmetanas.experiment import workdir as workdir_lib  # noqa: E402

TWO_CPUS = ("/cpu:0", "/cpu:1")


def two_logical_cpus():
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )


def tiny_config(algorithm="maml", steps=1, distribute="none"):
    """glyphs 3-way 1-shot, meta-batch 4 (2 tasks per replica on 2 replicas)."""
    config = defaults.base_config()
    config.data.source = "glyphs"
    config.data.image_size = 14
    config.data.ways, config.data.shots, config.data.queries = 3, 1, 2
    config.model.filters, config.model.num_blocks = 4, 2
    config.inner.steps, config.inner.eval_steps, config.inner.lr = 2, 2, 0.4
    config.meta.meta_batch_size = 4
    # SGD: the meta-update is linear in the meta-gradient, so a tight
    # tolerance holds (Adam's first step is ~lr * sign(g), which would turn
    # round-off on a near-zero component into a full lr difference).
    config.meta.optimizer, config.meta.lr = "sgd", 0.5
    config.train.steps = steps
    config.train.eval_every = 0
    config.train.log_every = 1
    config.train.progress = False
    config.eval.num_tasks = config.eval.num_val_tasks = 2
    config.eval.batch_size = 2
    config.train.distribute = distribute
    config.train.devices = TWO_CPUS if distribute == "mirrored" else ()
    if algorithm == "fomaml":
        config.meta.second_order = False
    elif algorithm == "maml":
        config.meta.second_order = True
    elif algorithm == "reptile":
        config.meta.algorithm = "reptile"
        config.inner.rule, config.inner.lr = "adam", 1e-2
        config.meta.lr = 1.0
    elif algorithm == "mamlpp":
        # MSL, LSLR, per-step BN statistics (BNRS, state) and weights (BNWB).
        config.meta.second_order = True
        config.meta.msl, config.meta.msl_epochs, config.meta.iterations_per_epoch = True, 2, 2
        config.inner.rule, config.inner.lr = "lslr", 0.4
        config.model.bn.num_steps = 2
        config.model.bn.per_step_stats = config.model.bn.per_step_affine = True
        config.inner.bn_mode = "running"
    elif algorithm == "alfa":
        config.inner.rule, config.inner.lr = "alfa", 0.1
        config.inner.alfa.layers = 2
    elif algorithm == "metanas":
        # Weights and architecture adapted and Reptile-meta-learned (no warm-up).
        config.model.name = "darts"
        config.model.darts.channels = 4
        config.model.darts.num_cells, config.model.darts.reduction_cells = 2, (1,)
        config.model.darts.num_nodes = 2
        config.model.darts.primitives = ("max_pool_3x3", "skip_connect", "conv_3x3")
        config.inner.steps = 1
        config.inner.groups = ("weights", "arch")
        config.inner.rule, config.inner.lr, config.inner.adam_beta1 = "adam", 1e-2, 0.0
        config.inner.arch = {"rule": "adam", "lr": 1e-2, "weight_decay": 1e-3}
        config.meta.algorithm = "reptile"
        config.meta.step_sizes = {"weights": 1.0, "arch": 0.6}
        config.metanas.warmup_until = 0
        config.metanas.eval_arch_steps = config.metanas.eval_weight_steps = 1
    elif algorithm == "reptile_persistent":
        config.meta.algorithm = "reptile"
        config.inner.rule, config.inner.lr = "adam", 1e-2
        config.inner.persistent_state = True
        config.meta.lr = 1.0
    else:
        raise ValueError(algorithm)
    return config


def variables_of(workdir, config):
    """The variables of the workdir's latest checkpoint, restored without a strategy."""
    exp = trainer.Experiment(config)
    initial = {v.path: v.numpy() for v in exp.model.variables}
    workdir_lib.restore(workdir, exp.checkpoint, "latest")
    values = {v.path: v.numpy() for v in exp.model.variables}
    values.update({"rule/" + v.path: v.numpy() for v in exp.algorithm.learner.variables})
    return values, initial, int(exp.step.numpy())


def compare(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def equivalence(out, workdir, algorithms):
    two_logical_cpus()
    results = {}
    for algorithm in algorithms:
        start = time.time()
        single = os.path.join(workdir, algorithm + "_single")
        mirrored = os.path.join(workdir, algorithm + "_mirrored")
        trainer.train(tiny_config(algorithm, 1, "none"), single)
        trainer.train(tiny_config(algorithm, 1, "mirrored"), mirrored)
        a, initial, step_a = variables_of(single, tiny_config(algorithm))
        b, _, step_b = variables_of(mirrored, tiny_config(algorithm))
        moved = max(float(np.max(np.abs(a[k] - initial[k]))) for k in initial)
        scale = max(float(np.max(np.abs(a[k]))) for k in a)
        results[algorithm] = {
            "max_abs_diff": compare(a, b), "moved": moved, "scale": scale,
            "steps": [step_a, step_b], "keys": len(a),
        }
        results[algorithm]["seconds"] = round(time.time() - start, 1)
        print(algorithm, results[algorithm], flush=True)
    with open(out, "w") as f:
        json.dump(results, f)


def resume(out, workdir):
    two_logical_cpus()
    algorithm = "fomaml"
    straight = os.path.join(workdir, "straight")
    trainer.train(tiny_config(algorithm, 4, "none"), straight)
    reference, initial, _ = variables_of(straight, tiny_config(algorithm))
    results = {}
    for first, second in (("mirrored", "none"), ("none", "mirrored")):
        run = os.path.join(workdir, f"{first}_then_{second}")
        trainer.train(tiny_config(algorithm, 2, first), run)
        halfway, _, _ = variables_of(run, tiny_config(algorithm))
        trainer.train(tiny_config(algorithm, 4, second), run)
        values, _, step = variables_of(run, tiny_config(algorithm))
        results[f"{first}_then_{second}"] = {
            "max_abs_diff": compare(reference, values),
            "step": step,
            "moved_after_resume": compare(values, halfway),
            "moved": compare(values, initial),
        }
        print(first, second, results[f"{first}_then_{second}"], flush=True)
    with open(out, "w") as f:
        json.dump(results, f)


def train(out, workdir, steps, distribute):
    """Trains and writes this process's own final variables (not the chief's checkpoint)."""
    config = tiny_config("fomaml", int(steps), distribute)
    # A budget no step reaches: the workers still agree on it every step (a
    # collective), which this run exercises without changing its result.
    config.train.time_limit_minutes = 60.0
    _, exp = trainer.run(config, workdir)
    np.savez(out, step=int(exp.step.numpy()),
             **{v.path.replace("/", "__"): v.numpy() for v in exp.model.variables})


def supernet(out):
    """FairNAS and SUMNAS (k=2) on the toy supernet of tests/nas: 2 replicas vs 1 device."""
    two_logical_cpus()
    sys.path.insert(0, os.path.join(ROOT, "tests", "nas"))
    import sumnas_test

    from tfmetanas import errors
    from tfmetanas.meta import sumnas

    mirrored = tf.distribute.MirroredStrategy(list(TWO_CPUS))
    results = {}
    for name, kwargs in (("fairnas", {"learning_rate": 0.1, "momentum": 0.9}),
                         ("sumnas", {"learning_rate": 1.0, "inner_steps": 2,
                                     "inner_learning_rate": 0.05, "momentum": 0.5})):
        values = {}
        for label, strategy in (("single", tf.distribute.get_strategy()), ("mirrored", mirrored)):
            with strategy.scope():
                model = sumnas_test._toy()
                trainer_ = sumnas.SupernetTrainer(model, name, total_steps=10, cosine=False,
                                                  distribution=strategy, **kwargs)
            # By position: Keras names the second toy's layers differently.
            initial = dict(enumerate(v.numpy() for v in trainer_.fm.variables_by_path.values()))
            for _ in range(2):
                trainer_.train_step(sumnas_test.X, sumnas_test.Y)
            values[label] = dict(enumerate(v.numpy() for v in trainer_.fm.variables_by_path.values()))
            values[label + "_step"] = int(trainer_.step.numpy())
        results[name] = {
            "max_abs_diff": compare(values["single"], values["mirrored"]),
            "moved": compare(values["single"], initial), "count": len(initial),
            "steps": [values["single_step"], values["mirrored_step"]],
        }
        print(name, results[name], flush=True)
    with mirrored.scope():
        try:
            sumnas.SupernetTrainer(sumnas_test._toy(), "spos", learning_rate=0.1, total_steps=2,
                                   distribution=mirrored)
            results["spos_refused"] = ""
        except errors.ConfigError as e:
            results["spos_refused"] = str(e)
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "equivalence":
        equivalence(args[0], args[1], args[2:])
    elif mode == "resume":
        resume(args[0], args[1])
    elif mode == "supernet":
        supernet(args[0])
    elif mode == "train":
        train(*args)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
