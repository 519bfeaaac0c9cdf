r"""Milliseconds per meta-iteration, first-call compile time and peak memory.

  python tools/benchmark.py --config=configs/omniglot/maml_5w1s.py \
      [--meta_batch_size=8] [--jit=false,true] [--repeats=10] [--warmup=2] \
      [--config.inner.steps=5 ...] [--out=FILE.json]

Runs the real meta-step of the config (the trainer's `tf.function`) on a
fixed meta-batch of tasks from the config's data source, so data loading is
excluded. For each `--jit` value it reports the first call (trace and
compile), then median/min/max ms over `--repeats` calls after `--warmup`,
and the peak resident memory of the process (Linux `ru_maxrss`). Each jit
setting runs in a fresh subprocess so peak memory is per setting.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A training config.", lock_config=True)
_BATCH = flags.DEFINE_integer("meta_batch_size", None, "Override meta.meta_batch_size.")
_JIT = flags.DEFINE_list("jit", ["false", "true"], "jit_compile settings to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed meta-iterations.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed meta-iterations after the first call.")
_OUT = flags.DEFINE_string("out", None, "Append the JSON results to this file.")
_SINGLE = flags.DEFINE_boolean("single", False, "Internal: measure one jit setting in-process.")


def measure(config, jit):
    import tensorflow as tf

    from tfmetanas.experiment import trainer

    with config.unlocked():
        config.train.jit_compile = jit
        if _BATCH.value:
            config.meta.meta_batch_size = _BATCH.value
    trainer.check_xla(config, jit)
    exp = trainer.Experiment(config, splits=("train",))
    batch = int(config.meta.meta_batch_size)
    tasks = next(iter(exp.sources["train"].dataset(0, batch)))
    algorithm = exp.algorithm
    # The steady-state step: the options of the last iteration (second order
    # after MAML++'s DA, architecture adapted after METANAS' warm-up).
    options = algorithm.step_options(max(int(config.train.steps) - 1, 0))
    second_order = options["second_order"]

    @tf.function(jit_compile=jit)
    def step(tasks, iteration):
        return algorithm.meta_learner.replica_step(tasks, iteration, **options)

    t = time.perf_counter()
    float(step(tasks, tf.constant(0, tf.int64))["meta/loss"])
    first = time.perf_counter() - t
    for i in range(_WARMUP.value):
        float(step(tasks, tf.constant(i + 1, tf.int64))["meta/loss"])
    times = []
    for i in range(_REPEATS.value):
        t = time.perf_counter()
        float(step(tasks, tf.constant(i + 1, tf.int64))["meta/loss"])
        times.append((time.perf_counter() - t) * 1000.0)
    return {
        "jit_compile": jit,
        "meta_batch_size": batch,
        "inner_steps": algorithm.learner.inner_steps,
        "second_order": second_order,
        "first_call_s": round(first, 2),
        "ms_median": round(statistics.median(times), 1),
        "ms_min": round(min(times), 1),
        "ms_max": round(max(times), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }


def main(argv):
    del argv
    if _SINGLE.value:
        result = measure(_CONFIG.value, _JIT.value[0].lower() == "true")
        print("RESULT " + json.dumps(result))
        return
    results = []
    for jit in _JIT.value:
        args = [a for a in sys.argv[1:] if not a.startswith("--jit") and not a.startswith("--out")]
        proc = subprocess.run(
            [sys.executable, __file__, *args, f"--jit={jit}", "--single"],
            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"jit={jit}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        result["config"] = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--config="))
        results.append(result)
        print(json.dumps(result))
    if _OUT.value:
        with open(_OUT.value, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    app.run(main)
