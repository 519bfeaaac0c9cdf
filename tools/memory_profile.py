r"""Where a process's resident memory goes: TensorFlow per graph node, and a config's data.

Three profiles behind the memory figures of docs/performance.md (issue 9), each
printing one JSON line of resident-set sizes (MB, from /proc/self/status:
``rss`` now, ``hwm`` the peak so far, and of ``rss`` the ``anon``ymous memory
and the ``file``-backed pages, mostly TensorFlow's shared libraries):

- ``--what=nodes``: a `tf.function` of ``--nodes`` small ops (a chain of
  ``x * uniform() + 1``), measured after `import tensorflow`, after tracing,
  after the first call and after handing freed memory back (``malloc_trim``):
  what TensorFlow costs per graph node on this machine, whatever the model.
- ``--what=data``: a config's task source, measured after building it and
  after the first meta-batch from its tf.data stream (the memory a run holds
  before its first step).
- ``--what=step``: a config's compiled meta-step (``--mode=meta_step``, the
  options of the last training iteration) or meta-test adaptation of one
  task (``--mode=meta_test``; without ``--mode`` and ``--phase``, the
  config's ``bench.mode`` and ``bench.phase``, as `tools/benchmark.py` runs
  a row, with the config's own derivative order), measured after setup,
  after tracing, at the first call's peak and after handing freed memory back, and at a second
  call's peak; plus the graph's node count and the peak of TensorFlow's own
  CPU allocator (the step's tensors): where a benchmark row's peak comes from.

  python tools/memory_profile.py --what=nodes --nodes=20000
  python tools/memory_profile.py --what=data --config=configs/bench/mamlpp_omniglot_5w1s_mb8.py
  python tools/memory_profile.py --what=step --config=configs/bench/metanas_omniglot_20w1s_metatest.py
"""

import ctypes
import gc
import json
import time

from absl import app, flags
from ml_collections import config_flags

_WHAT = flags.DEFINE_enum("what", "nodes", ["nodes", "data", "step"], "Which profile.")
_NODES = flags.DEFINE_integer("nodes", 20000, "--what=nodes: links of the op chain.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "--what=data: a training config.")
_SPLIT = flags.DEFINE_string("split", "train", "--what=data: the split.")
_MODE = flags.DEFINE_enum("mode", None, ["meta_step", "meta_test"],
                          "--what=step: the training step or meta-test adaptation (default: the "
                          "config's bench.mode, as tools/benchmark.py; else meta_step).")
_PHASE = flags.DEFINE_enum("phase", None, ["steady", "warmup"],
                           "--what=step, meta_step: the step options of the last training "
                           "iteration (steady) or of iteration 0 (warmup; default: the config's "
                           "bench.phase, as tools/benchmark.py; else steady).")


_STATUS_KEYS = {"VmRSS": "rss", "VmHWM": "hwm", "RssAnon": "anon", "RssFile": "file"}


def memory_mb():
    """``{"rss": MB, "hwm": MB, "anon": MB, "file": MB}`` of this process: resident
    now, the peak so far, and the resident set's anonymous memory (what the process
    allocated) and file-backed pages (mostly TensorFlow's shared libraries); empty
    where /proc is missing."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = _STATUS_KEYS.get(line.split(":")[0])
                if key:
                    out[key] = int(line.split()[1]) // 1024
    except OSError:
        pass
    return out


def _trim():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def profile_nodes(num_links):
    """Memory after import, tracing, first call and trim for a chain of `num_links` links."""
    import tensorflow as tf

    out = {"imported": memory_mb()}

    @tf.function
    def chain(x):
        for _ in range(num_links):
            x = x * tf.random.uniform([]) + 1.0
        return x

    t = time.perf_counter()
    concrete = chain.get_concrete_function(tf.constant(1.0))
    out["trace_s"] = round(time.perf_counter() - t, 2)
    out["traced"] = memory_mb()
    graph = concrete.graph.as_graph_def()
    out["graph_nodes"] = len(graph.node)
    del graph
    _trim()
    out["traced_trimmed"] = memory_mb()
    t = time.perf_counter()
    chain(tf.constant(1.0))
    out["first_call_s"] = round(time.perf_counter() - t, 2)
    out["called"] = memory_mb()
    _trim()
    out["called_trimmed"] = memory_mb()
    nodes = out["graph_nodes"]
    base = out["traced_trimmed"]["rss"]
    out["kb_per_node"] = {
        "trace (held)": round((base - out["imported"]["rss"]) * 1024 / nodes, 1),
        "first call (peak)": round((out["called"]["hwm"] - base) * 1024 / nodes, 1),
        "first call (held)": round((out["called_trimmed"]["rss"] - base) * 1024 / nodes, 1),
    }
    return out


def profile_data(config, split):
    import tensorflow as tf  # noqa: F401  (what the import alone holds)

    from tfmetanas.experiment import trainer

    out = {"imported": memory_mb()}
    experiment = trainer.Experiment(config, splits=(split,))
    out["experiment"] = memory_mb()
    source = experiment.sources[split]
    iterator = iter(source.dataset(0, int(config.meta.meta_batch_size)))
    next(iterator)
    out["first_batch"] = memory_mb()
    _trim()
    out["trimmed"] = memory_mb()
    return out


def _reset_peak():
    """Resets the kernel's high-water mark, so ``hwm`` is the next phase's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def step_setting(config, mode=None, phase=None):
    """``(mode, phase)``: the arguments, else the config's ``bench`` section's
    (a benchmark row's, as `tools/benchmark.py` reads them), else
    ``("meta_step", "steady")``. The derivative order is the config's own
    (`tools/benchmark.py --order` is not followed)."""
    bench = config.get("bench") or {}
    mode = mode or bench.get("mode") or "meta_step"
    phase = phase or bench.get("phase") or "steady"
    if mode not in ("meta_step", "meta_test") or phase not in ("steady", "warmup"):
        raise app.UsageError(
            f"bench.mode must be meta_step or meta_test and bench.phase steady or warmup, got "
            f"{mode!r} and {phase!r}.")
    return mode, phase


def profile_step(config, mode=None, phase=None):
    """Memory of a config's compiled step, phase by phase (see the module docstring).

    `mode` and `phase` None take the config's (`step_setting`); the output
    says which ran.
    """
    import tensorflow as tf

    from tfmetanas.experiment import trainer

    mode, phase = step_setting(config, mode, phase)
    out = {"mode": mode, "phase": phase, "imported": memory_mb()}
    split = "test" if mode == "meta_test" else "train"
    experiment = trainer.Experiment(config, splits=(split,))
    iteration = 0 if phase == "warmup" else max(int(config.train.steps) - 1, 0)
    fixed = trainer.fixed_batch_step(experiment, mode, iteration)
    step, args = fixed.step, fixed.args
    _trim()
    out["setup"] = memory_mb()
    _reset_peak()
    t = time.perf_counter()
    graph = step.get_concrete_function(*args).graph.as_graph_def()
    out["trace_s"] = round(time.perf_counter() - t, 2)
    out["graph_nodes"] = len(graph.node) + sum(len(f.node_def) for f in graph.library.function)
    del graph
    _trim()
    out["traced"] = memory_mb()

    def call(name, i):
        """One call of the step as training makes it (the first hands freed memory
        back, `tfmetanas.memory`): its seconds and the memory at its end (``hwm``: its peak)."""
        _reset_peak()
        t = time.perf_counter()
        float(fixed.call(i)["meta/loss"])
        out[f"{name}_s"] = round(time.perf_counter() - t, 2)
        out[name] = memory_mb()

    call("first_call", 0)
    _trim()
    out["first_call_trimmed"] = memory_mb()
    call("second_call", 1)
    try:
        info = tf.config.experimental.get_memory_info("CPU:0")
        out["tf_allocator_mb"] = {k: v // 2**20 for k, v in info.items()}
    except (ValueError, tf.errors.OpError):
        pass  # No allocator statistics on this device or build.
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _WHAT.value == "nodes":
        result = profile_nodes(_NODES.value)
    else:
        if _CONFIG.value is None:
            raise app.UsageError(f"--what={_WHAT.value} needs --config.")
        if _WHAT.value == "data":
            result = profile_data(_CONFIG.value, _SPLIT.value)
        else:
            result = profile_step(_CONFIG.value, _MODE.value, _PHASE.value)
    print(json.dumps(result))


if __name__ == "__main__":
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
