r"""Milliseconds per meta-iteration, compile time, peak memory and GFLOP/s of a config.

  python tools/benchmark.py --config=configs/omniglot/maml_5w1s.py \
      [--meta_batch_size=8] [--jit=false,true] [--order=second,first] \
      [--phase=steady|warmup] [--mode=meta_step|meta_test] [--repeats=10] \
      [--warmup=2] [--config.inner.steps=5 ...] [--out=FILE.json]
  python tools/benchmark.py --all_bench --out=bench.json [--only=metanas]
  python tools/benchmark.py --render=bench.json        # the docs/performance.md table
  python tools/benchmark.py --config=... --profile_dir=DIR  # + op-level profile
  python tools/benchmark.py --config=configs/miniimagenet/maml_5w1s.py --synthetic_data

Runs the real meta-step of the config (the trainer's step: the meta-learner's
`replica_step` under one `tf.function`) on a fixed meta-batch of tasks from
the config's data source, so data loading is excluded. For each measured
setting (`--jit` x `--order`) a fresh subprocess reports:

- the first call (trace and compile) in seconds, then median/min/max ms over
  `--repeats` calls after `--warmup` untimed ones, and the CPU time per call
  (user + system, all threads; less sensitive to other processes than wall
  time);
- the peak resident memory of the process (Linux `ru_maxrss`, read before
  anything else is allocated), and the same before the first call (runtime,
  data set and variables: the part the step does not cost);
- the FLOPs of one call, counted on the traced graph by
  `tfmetanas.graph_flops` (convolutions and matrix products, loops
  multiplied out), and the achieved GFLOP/s at the median time;
- the float32 matmul roofline of the machine measured in the same process
  right after (best of a few rounds of one `tf.linalg.matmul` of
  `--roofline_size` square matrices per core, run concurrently), and the
  1-minute load average before and after: the project machine is shared, so
  every number is only as good as its load;
- for bench configs, the speedup over the reference figure, and that speedup
  scaled to the reference machine's roofline (`REFERENCE_ROOFLINE_GFLOPS`; an
  estimate, see `speedup_at_reference_roofline`).

A setting whose subprocess fails is reported (its error output, a "failed"
result in --out and in the table) and the run ends with exit code 2 after the
other settings have run.

Benchmark configs (`configs/bench/`, one per row of issue 9's table) carry a
`bench` section: the row's name, the reference figures, the derivative
orders to measure, the phase (`steady`: the options of the last training
iteration, e.g. second order after MAML++'s DA and the architecture adapted
after METANAS' warm-up; `warmup`: the options of iteration 0), the mode
(`meta_step`, or `meta_test`: one task's meta-test adaptation,
`Algorithm.test_adapt`, e.g. METANAS' 50+50 steps, pruning and scoring) and
whether tasks come from random images of the config's shapes
(`synthetic_data`, for mini-ImageNet shapes without the data set). The flags
override the section. `--all_bench` runs every `configs/bench/*.py` (jit off,
the section's orders) and writes one JSON; `--render` turns such a JSON into
the markdown table of docs/performance.md.
"""

import collections
import glob
import json
import os
import pickle
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The float32 matmul roofline of the machine the reference figures were measured on,
# through TensorFlow (issue 9: a 2-core AVX2 machine at about 2.45 GHz).
REFERENCE_ROOFLINE_GFLOPS = 67.0
BENCH_DIR = os.path.join(ROOT, "configs", "bench")
ORDERS = ("second", "first", "config")
PHASES = ("steady", "warmup")
MODES = ("meta_step", "meta_test")

_CONFIG = config_flags.DEFINE_config_file("config", None, "A training config.", lock_config=True)
_BATCH = flags.DEFINE_integer("meta_batch_size", None, "Override meta.meta_batch_size.",
                              lower_bound=1)
_JIT = flags.DEFINE_list(
    "jit",
    None,
    "jit_compile settings to measure (default: false,true; bench configs and --all_bench: false).",
)
_ORDER = flags.DEFINE_list(
    "order",
    None,
    "Derivative orders to measure: second, first or config "
    "(the phase's own; default: the bench section's orders, else config).",
)
_PHASE = flags.DEFINE_enum(
    "phase",
    None,
    PHASES,
    "Which iteration's step options (default: the bench section's, else steady).",
)
_MODE = flags.DEFINE_enum(
    "mode", None, MODES, "What one timed call runs (default: the bench section's, else meta_step)."
)
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed calls.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after the first call.", lower_bound=0)
_FLOPS = flags.DEFINE_boolean("flops", True, "Count the FLOPs of the traced step.")
_ROOFLINE = flags.DEFINE_integer(
    "roofline_size", 2048, "Side of the roofline's square matmul (0: skip).", lower_bound=0
)
_OUT = flags.DEFINE_string("out", None, "Append JSON lines here (--all_bench: write one JSON).")
_ALL = flags.DEFINE_boolean("all_bench", False, "Run every configs/bench/*.py row.")
_ONLY = flags.DEFINE_list("only", None, "--all_bench: rows whose file name contains one of these.")
_SPLIT_TRACE = flags.DEFINE_bool(
    "split_trace", False,
    "Trace before the first call, reporting the tracing time and the resident memory after "
    "it (trace_s, traced_rss_mb). Off by default: it made first calls slower by a few seconds.")
_MALLOC_TRIM = flags.DEFINE_bool(
    "malloc_trim", False,
    "glibc's malloc_trim(0) before the timed calls: their peak (steady_peak_rss_mb) then "
    "shows what the steps need rather than what the first call left allocated.")
_RENDER = flags.DEFINE_string(
    "render", None, "Print the markdown table of an --all_bench JSON (or of --out JSON lines).")
_MEASURED = flags.DEFINE_string(
    "measured_reference", None,
    "With --render: JSON lines of reference runs measured on this machine (row, order, "
    "median_ms, min_ms, max_ms, peak_rss_mb); prints the like-for-like table instead. "
    "Repeated runs of a row pair with ours in file order (interleaved pairs): our k-th with "
    "the reference's k-th, or its last when it has fewer.")
_PROFILE = flags.DEFINE_string(
    "profile_dir",
    None,
    "Also trace --profile_steps calls with the "
    "TensorFlow profiler into this folder and print an op breakdown.",
)
_SYNTHETIC = flags.DEFINE_boolean(
    "synthetic_data", None,
    "Draw tasks from random images of the config's shapes (mini-ImageNet configs, whose data set "
    "is not here; default: the bench section's bench.synthetic_data, else false).")
_PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 2, "Calls traced by --profile_dir.")
_SINGLE = flags.DEFINE_string("single", None, "Internal: measure one setting (JSON) in-process.")


def _error(message):
    from tfmetanas import errors

    return errors.ConfigError(message)


def _failures_error(failed):
    """The error ending a run in which the subprocess of some setting failed."""
    from tfmetanas import errors

    class BenchmarkFailed(errors.TFMetaNASError):
        """A setting's subprocess exited with an error or reported no result."""

    listing = "; ".join(f"{r['config']} ({r['order']} order, jit {r.get('jit_compile')})"
                        for r in failed)
    return BenchmarkFailed(
        f"{len(failed)} setting(s) failed, their error output is above: {listing}. The "
        "settings that ran are in the results (failed ones are marked \"failed\")."
    )


def bench_section(config):
    """The config's `bench` section as a dict (empty for ordinary configs)."""
    section = config.get("bench", None)
    return section.to_dict() if section is not None else {}


class PhasePeakRss:
    """Context manager: the peak resident memory of the block it wraps.

    Resets the kernel's high-water mark at entry (``5 > /proc/self/clear_refs``)
    and reads it (``VmHWM``) at exit, so it measures one phase, not the
    process's life so far, with no sampling thread (a Python thread polling
    every 10 ms slowed the timed steps by 20-30% through the GIL). The reset
    also resets ``ru_maxrss``, so `process_peak_mb` keeps the process's peak
    across phases. ``peak_mb`` is None where /proc does not allow it.
    """

    process_peak_mb = 0.0

    def __init__(self):
        self.peak_mb = None
        self._reset = False

    @staticmethod
    def rss_mb():
        """The current resident set (MB), or None."""
        try:
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
        except OSError:
            return None
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    @staticmethod
    def _status_mb(*fields):
        """``{field: MB}`` of /proc/self/status fields (kB there), or None unless all are there."""
        values = {}
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    name = line.split(":")[0]
                    if name in fields:
                        values[name] = int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return values if len(values) == len(fields) else None

    @classmethod
    def rss_split_mb(cls):
        """The current resident set split into anonymous memory (what the process
        allocated) and file-backed pages (shared libraries, mapped files):
        ``{"anon": MB, "file": MB}``, or None where /proc does not say."""
        values = cls._status_mb("RssAnon", "RssFile")
        return None if values is None else {
            "anon": round(values["RssAnon"], 1), "file": round(values["RssFile"], 1)}

    @classmethod
    def _high_water_mb(cls):
        values = cls._status_mb("VmHWM")
        if values is None:
            return None
        cls.process_peak_mb = max(cls.process_peak_mb, values["VmHWM"])
        return values["VmHWM"]

    def __enter__(self):
        self._high_water_mb()  # Keep the peak so far before resetting it.
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._reset = True
        except OSError:
            self._reset = False
        return self

    def __exit__(self, *exc):
        peak = self._high_water_mb()
        if self._reset and peak is not None:
            self.peak_mb = round(peak, 1)
        return False


def _commit():
    """The checked-out commit of this repository, ``+dirty`` when the package, the
    configs or this tool differ from it (None outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True, timeout=30).stdout.strip()
        changes = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--", "tfmetanas", "configs",
             "tools/benchmark.py"],
            cwd=ROOT, check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not head:
        return None
    return head + ("+dirty" if changes else "")


def load_average():
    return round(os.getloadavg()[0], 2)


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def matmul_roofline(size=2048, repeats=5):
    """Float32 GFLOP/s of `tf.linalg.matmul` on square matrices: (best, median).

    One independent matmul per core in one `tf.function`, so that the machine's
    cores are all busy whatever the process's thread settings (with one thread
    per op, `train.intra_op_threads=1`, a single matmul would use one core).
    """
    import tensorflow as tf

    count = max(os.cpu_count() or 1, 1)
    a = tf.random.normal([count, size, size])
    b = tf.random.normal([count, size, size])

    @tf.function
    def products(a, b):
        return [tf.linalg.matmul(a[i], b[i]) for i in range(count)]

    [p.numpy() for p in products(a, b)]  # warm-up: tracing, thread pools, oneDNN primitives
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        [p.numpy() for p in products(a, b)]
        times.append(time.perf_counter() - t)
    flops = 2.0 * size**3 * count
    return round(flops / min(times) / 1e9, 1), round(flops / statistics.median(times) / 1e9, 1)


def _write_synthetic_miniimagenet(config, folder):
    """Random-pixel mini-ImageNet pickles with enough classes/images for the config's tasks."""
    import numpy as np

    shots = max(int(config.data.shots), int(config.data.get("train_shots", 0) or 0))
    per_class = shots + int(config.data.queries)
    classes = int(config.data.ways) + 1
    rng = np.random.default_rng(0)
    size = int(config.data.image_size)
    for split in ("train", "val", "test"):
        images = rng.integers(0, 256, (classes * per_class, size, size, 3), dtype=np.uint8)
        class_dict = {
            f"n{c:08d}": list(range(c * per_class, (c + 1) * per_class)) for c in range(classes)
        }
        with open(os.path.join(folder, f"mini-imagenet-cache-{split}.pkl"), "wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)


def _check_synthetic_source(config):
    if config.data.source != "miniimagenet":
        raise _error(
            f"--synthetic_data (bench.synthetic_data) draws random mini-ImageNet images, but "
            f"this config reads data.source={config.data.source!r}; drop the flag (that source "
            "is available here) or use a mini-ImageNet config."
        )


def _synthetic_data(config, folder):
    _check_synthetic_source(config)
    _write_synthetic_miniimagenet(config, folder)
    with config.unlocked():
        config.data.root = folder


def _op_breakdown(logdir, top=30):
    """Total time per TensorFlow op type in the profiler traces under `logdir`.

    Reads the XPlane protos the profiler writes: on the host plane the
    executor records one event per op kernel, named "op_name:OpType"
    (oneDNN kernels as "_MklNativeConv2D" etc.). Function-call and
    control-flow ops, whose events contain their body's, are skipped. Ops run
    on two inter-op threads, so the sum can exceed wall time; shares are of
    the summed op time.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    skip = {
        "PartitionedCall",
        "StatefulPartitionedCall",
        "While",
        "StatelessWhile",
        "If",
        "StatelessIf",
    }
    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    per_type, count = collections.Counter(), collections.Counter()
    for path in paths:
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
        for plane in space.planes:
            for line in plane.lines:
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    if ":" not in name or "::" in name:
                        continue
                    op_type = name.rsplit(":", 1)[1]
                    if not op_type or op_type in skip or " " in name:  # eager/runtime events
                        continue
                    per_type[op_type] += event.duration_ps / 1e9  # ms
                    count[op_type] += 1
    total = sum(per_type.values()) or 1.0
    return [
        {"op": k, "ms": round(v, 1), "share": round(v / total, 3), "calls": count[k]}
        for k, v in per_type.most_common(top)
    ]


def _config_overrides():
    """The ``--config.*`` overrides given, as ``{"field.path": value}`` (JSON-safe)."""
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    return json.loads(json.dumps(overrides, default=str))


def measure(config, setting):
    """Times one setting in this process; returns the result dict."""
    import tensorflow as tf

    from tfmetanas import graph_flops
    from tfmetanas.experiment import trainer

    commit = _commit()  # Before anything runs: the code measured is the code imported now.
    jit, order = setting["jit"], setting["order"]
    phase, mode = setting["phase"], setting["mode"]
    scratch = tempfile.TemporaryDirectory()
    with config.unlocked():
        config.train.jit_compile = jit
        if setting.get("meta_batch_size"):
            config.meta.meta_batch_size = int(setting["meta_batch_size"])
        if order != "config":
            config.meta.second_order = order == "second"
            config.meta.first_order_until = 0
    if setting.get("synthetic_data"):
        _synthetic_data(config, scratch.name)
    trainer.check_xla(config, jit)
    split = "test" if mode == "meta_test" else "train"
    exp = trainer.Experiment(config, splits=(split,))
    batch = 1 if mode == "meta_test" else int(config.meta.meta_batch_size)
    iteration = 0 if phase == "warmup" else max(int(config.train.steps) - 1, 0)
    fixed = trainer.fixed_batch_step(
        exp, mode, iteration, second_order=None if order == "config" else order == "second",
        jit_compile=jit,
    )
    step, args, call = fixed.step, fixed.args, fixed.call
    inner_steps, second_order = fixed.inner_steps, fixed.second_order

    # Peak memory before the first call: the TensorFlow runtime, the data set
    # in memory and the variables, i.e. what the step itself does not cost.
    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    load_before = load_average()
    t = time.perf_counter()
    trace_s = traced_rss = None
    with PhasePeakRss() as first_rss:
        if _SPLIT_TRACE.value:
            step.get_concrete_function(*args)  # Python tracing only.
            trace_s = round(time.perf_counter() - t, 2)
            traced_rss = PhasePeakRss.rss_mb()
        float(call(0)["meta/loss"])
    first = time.perf_counter() - t
    for i in range(_WARMUP.value):
        float(call(i + 1)["meta/loss"])
    if _MALLOC_TRIM.value:
        import ctypes

        # Hands memory that malloc keeps after the first call back to the system.
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    times = []
    cpu_before = _cpu_seconds()
    with PhasePeakRss() as steady_rss:
        for i in range(_REPEATS.value):
            t = time.perf_counter()
            float(call(i + 1)["meta/loss"])
            times.append((time.perf_counter() - t) * 1000.0)
    cpu_ms = (_cpu_seconds() - cpu_before) * 1000.0 / max(len(times), 1)
    # Nothing was handed back since the last call's peak, so this is close to it.
    steady_split = PhasePeakRss.rss_split_mb()
    # Read before the FLOP count and the roofline allocate. PhasePeakRss resets the
    # kernel's high-water mark (and with it ru_maxrss) but keeps the process's peak.
    peak_rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                   PhasePeakRss.process_peak_mb)
    load_after = load_average()
    median = statistics.median(times)
    result = {
        "mode": mode,
        "phase": phase,
        "order": "second" if second_order else "first",
        "jit_compile": jit,
        "synthetic_data": bool(setting.get("synthetic_data")),
        "meta_batch_size": batch,
        "inner_steps": int(inner_steps),
        # Support examples per inner step (0: all), and per meta-test step for METANAS
        # (metanas.eval_batch_size, -1: the inner one).
        "inner_batch_size": int(config.inner.get("batch_size", 0) or 0),
        "eval_batch_size": (int(config.metanas.get("eval_batch_size", -1))
                            if mode == "meta_test" and "metanas" in config else None),
        "commit": commit,
        "package": os.path.dirname(sys.modules["tfmetanas"].__file__),
        "second_order": second_order,
        "first_call_s": round(first, 2),
        "trace_s": trace_s,
        "ms_median": round(median, 1),
        "ms_min": round(min(times), 1),
        "ms_max": round(max(times), 1),
        "repeats": len(times),
        # CPU time (user + system, all threads) per timed call: on a shared machine
        # it moves much less with the load than wall time does.
        "cpu_ms_per_call": round(cpu_ms, 1),
        # The config overrides of the command line (every flag form): what distinguishes
        # runs of one config.
        "config_overrides": _config_overrides(),
        "peak_rss_mb": round(peak_rss, 1),
        "setup_rss_mb": round(setup_rss, 1),
        # The first call (trace, graph optimisation, first run) against the
        # timed calls (the step's own tensors), see PhasePeakRss.
        "traced_rss_mb": None if traced_rss is None else round(traced_rss, 1),
        "first_call_peak_rss_mb": first_rss.peak_mb,
        "steady_peak_rss_mb": steady_rss.peak_mb,
        # Resident MB right after the timed calls, anonymous (what the process
        # allocated) and file-backed (mostly TensorFlow's shared libraries).
        "steady_end_rss_split_mb": steady_split,
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": load_after,
    }
    if _FLOPS.value:
        by_type = collections.Counter()
        flops = graph_flops.function_flops(step, *args, by_type=by_type)
        result["flops"] = int(flops)
        result["gflop"] = round(flops / 1e9, 3)
        result["gflops_achieved"] = round(flops / (median / 1000.0) / 1e9, 1)
        result["gflop_by_op"] = {k: round(v / 1e9, 3) for k, v in by_type.most_common()}
        # The traced graph's size (its functions included): what tracing and graph
        # optimisation cost in time and memory grows with it.
        graph = step.get_concrete_function(*args).graph.as_graph_def()
        nodes = collections.Counter(n.op for n in graph.node)
        for function in graph.library.function:
            nodes.update(n.op for n in function.node_def)
        result["graph_nodes"] = int(sum(nodes.values()))
        result["graph_nodes_by_op"] = dict(nodes.most_common(12))
    if _ROOFLINE.value:
        best, med = matmul_roofline(_ROOFLINE.value)
        result["roofline_gflops"] = best
        result["roofline_gflops_median"] = med
        if "gflops_achieved" in result:
            result["roofline_fraction"] = round(result["gflops_achieved"] / best, 3)
    if _PROFILE.value:
        logdir = os.path.join(_PROFILE.value, f"{mode}_{phase}_{result['order']}_jit{int(jit)}")
        tf.profiler.experimental.start(logdir)
        t = time.perf_counter()
        for i in range(_PROFILE_STEPS.value):
            float(call(i + 1)["meta/loss"])
        traced_ms = (time.perf_counter() - t) * 1000.0 / max(_PROFILE_STEPS.value, 1)
        tf.profiler.experimental.stop()
        result["profile"] = {
            "logdir": logdir,
            "ms_per_call_traced": round(traced_ms, 1),
            "ops": _op_breakdown(logdir),
        }
    scratch.cleanup()
    return result


def settings_for(config, jit=None, orders=None, phase=None, mode=None, meta_batch_size=None,
                 synthetic_data=None):
    """The (jit x order) settings to measure: flags first, then the bench section, then defaults."""
    section = bench_section(config)
    if synthetic_data is None:
        synthetic_data = bool(section.get("synthetic_data", False))
    if synthetic_data:
        _check_synthetic_source(config)  # Before any child process starts.
    jits = jit or (["false"] if section else ["false", "true"])
    orders = orders or list(section.get("orders", ("config",)))
    for order in orders:
        if order not in ORDERS:
            raise _error(f"Unknown order {order!r}; valid: {', '.join(ORDERS)}.")
    phase = phase or section.get("phase", "steady")
    mode = mode or section.get("mode", "meta_step")
    if phase not in PHASES or mode not in MODES:
        raise _error(
            f"phase must be one of {PHASES} and mode one of {MODES}, got {phase!r}, {mode!r}."
        )
    out = []
    for j in jits:
        for order in orders:
            out.append(
                {
                    "jit": str(j).lower() == "true",
                    "order": order,
                    "phase": phase,
                    "mode": mode,
                    "meta_batch_size": meta_batch_size,
                    "synthetic_data": bool(synthetic_data),
                }
            )
    return out


def _config_args(argv):
    """Command-line arguments passed through to the subprocess (config and its overrides)."""
    own = ("--jit", "--out", "--order", "--all_bench", "--only", "--render", "--single")
    return [a for a in argv if not any(a == o or a.startswith(o + "=") for o in own)]


def run_setting(config_path, setting, extra_args):
    """Runs one setting in a fresh subprocess (peak memory per setting); returns its result."""
    args = [
        sys.executable,
        os.path.abspath(__file__),
        f"--config={config_path}",
        *extra_args,
        f"--single={json.dumps(setting)}",
    ]
    proc = subprocess.run(
        args, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    config = os.path.relpath(os.path.abspath(config_path), ROOT)
    if proc.returncode or not lines:
        print(f"{config_path} {setting}: failed (exit code {proc.returncode})\n"
              f"{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
        return {"config": config, "order": setting["order"],
                "jit_compile": setting.get("jit"), "failed": True,
                "arguments": list(extra_args)}
    result = json.loads(lines[-1][len("RESULT ") :])
    result["config"] = config
    return result


def with_reference(result, section):
    """Adds the row name, the reference figures and ours/reference ratios (a
    failed setting's result gets the row name only)."""
    reference = section.get("reference", {})
    result["row"] = section.get("row", result["config"])
    if result.get("failed"):
        return result
    ref_ms = reference.get(f"{result['order']}_order_ms")
    ref_rss = reference.get("peak_rss_mb")
    result["reference_ms"] = ref_ms
    result["reference_peak_rss_mb"] = ref_rss
    result["speedup"] = round(ref_ms / result["ms_median"], 2) if ref_ms else None
    result["speedup_at_reference_roofline"] = speedup_at_reference_roofline(result)
    result["rss_ratio"] = round(result["peak_rss_mb"] / ref_rss, 2) if ref_rss else None
    return result


def speedup_at_reference_roofline(result):
    """The speedup had this machine the reference machine's matmul roofline.

    ``speedup * REFERENCE_ROOFLINE_GFLOPS / roofline``: our time scaled by the
    ratio of the two rooflines, with the roofline this row's process measured.
    An estimate: like for like if the step's time scales with the matmul
    roofline (compute-bound steps). Memory-bound work scales less, so on a
    machine whose roofline is above the reference's the estimate is likely
    pessimistic, below it optimistic. None without a speedup or a roofline.
    """
    speedup, roofline = result.get("speedup"), result.get("roofline_gflops")
    if not speedup or not roofline:
        return None
    return round(speedup * REFERENCE_ROOFLINE_GFLOPS / roofline, 2)


def machine():
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


def all_bench(only=None):
    """Runs every configs/bench row; returns the JSON document."""
    from tfmetanas.experiment.defaults import sibling_config

    paths = sorted(glob.glob(os.path.join(BENCH_DIR, "*.py")))
    if only:
        paths = [p for p in paths if any(o in os.path.basename(p) for o in only)]
        if not paths:
            raise _error(f"--only={','.join(only)} matches no file in {BENCH_DIR}.")
    passthrough = [a for a in _config_args(sys.argv[1:]) if not a.startswith("--config")]
    doc = {"machine": machine(), "results": []}
    for path in paths:
        config = sibling_config(path, os.path.basename(path))
        section = bench_section(config)
        for setting in settings_for(config, jit=_JIT.value):
            result = with_reference(
                run_setting(os.path.relpath(path, ROOT), setting, passthrough), section)
            doc["results"].append(result)
            print(json.dumps(result), flush=True)
            if _OUT.value:  # rewritten after every row: a long run leaves partial results
                with open(_OUT.value, "w") as f:
                    json.dump(doc, f, indent=1)
    failed = [r for r in doc["results"] if r.get("failed")]
    if failed:
        raise _failures_error(failed)
    return doc


def _fmt(value, spec="{:,.0f}", missing="—"):
    return missing if value is None else spec.format(value)


def _read_text(path, flag):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise _error(f"--{flag}={path}: cannot read it ({e.strerror}).") from e


def load_results(path):
    """An --all_bench JSON document, or the JSON lines that --out appends one run at a time."""
    text = _read_text(path, "render")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        try:
            doc = {"results": [json.loads(line) for line in text.splitlines() if line.strip()]}
        except json.JSONDecodeError as e:
            raise _error(f"--render={path}: neither a JSON document nor JSON lines ({e}).") from e
    doc = doc if isinstance(doc, dict) and "results" in doc else {"results": [doc]}
    results = doc["results"] if isinstance(doc["results"], list) else [doc["results"]]
    needed = ("order", "ms_median", "ms_min", "ms_max", "peak_rss_mb")
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not _row_name(r):
            raise _error(f"--render={path}: result {i} is not a benchmark result (no row).")
        missing = [] if r.get("failed") else [k for k in needed if k not in r]
        if missing:
            raise _error(f"--render={path}: result {i} is not a benchmark result "
                         f"(missing {missing}).")
    return {**doc, "results": results}


def _row_name(result):
    return result.get("row") or result.get("config")


def _ms_range(median, low, high):
    """``median (low-high) ms``."""
    return f"{median:,.0f} ({low:,.0f}-{high:,.0f}) ms"


def render_table(doc):
    """The markdown table of an --all_bench JSON document (docs/performance.md)."""
    lines = [
        "| reference run | order | reference | ours: median (min-max) | speedup "
        f"| speedup at {REFERENCE_ROOFLINE_GFLOPS:.0f} GFLOP/s | first call "
        "| peak RSS: ref / ours | GFLOP per call | GFLOP/s (of roofline) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["results"]:
        if r.get("failed"):
            lines.append(f"| {_row_name(r)} | {r['order']} | | failed | | | | | | | |")
            continue
        ours = _ms_range(r["ms_median"], r["ms_min"], r["ms_max"])
        speedup = _fmt(r.get("speedup"), "**{:.2f}x**")
        normalised = _fmt(speedup_at_reference_roofline(r), "{:.2f}x")
        rss = f"{_fmt(r.get('reference_peak_rss_mb'))} / {r['peak_rss_mb']:,.0f} MB"
        gflops = "—"
        if r.get("gflops_achieved") is not None:
            gflops = f"{r['gflops_achieved']:.1f}"
            if r.get("roofline_gflops"):
                gflops += f" ({r['gflops_achieved'] / r['roofline_gflops']:.0%} of "
                gflops += f"{r['roofline_gflops']:.0f})"
        load = f"{r['load_avg_1m_before']:.1f}-{r['load_avg_1m_after']:.1f}"
        lines.append(
            f"| {_row_name(r)} | {r['order']} "
            f"| {_fmt(r.get('reference_ms'), '{:,.0f} ms')} | {ours} "
            f"| {speedup} | {normalised} | {r['first_call_s']:.1f} s | {rss} "
            f"| {_fmt(r.get('gflop'), '{:.1f}')} "
            f"| {gflops} | {load} |"
        )
    return "\n".join(lines)


def load_measured_reference(path):
    """``{(row, order): [runs]}`` (file order) from JSON lines of reference runs timed here."""
    runs = collections.defaultdict(list)
    for number, line in enumerate(_read_text(path, "measured_reference").splitlines(), 1):
        if not line.strip():
            continue
        try:
            run = json.loads(line)
            key = (run["row"], run["order"])
            fields = [run[k] for k in ("median_ms", "min_ms", "max_ms", "peak_rss_mb")]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                       for v in fields):
                raise TypeError(f"not all positive numbers: {fields}")
        except (ValueError, KeyError, TypeError) as e:
            raise _error(f"{path}:{number}: not a reference run ({e!r}); each line needs "
                         "row, order, and positive numbers median_ms, min_ms, max_ms and "
                         "peak_rss_mb.") from e
        runs[key].append(run)
    return dict(runs)


def render_like_for_like(doc, measured):
    """Markdown table of our rows against the reference code timed on this machine.

    Rows of `doc` (as `render_table`) matched to `measured` by row name and
    order; the issue's figure is shown beside the one measured here. Repeated
    runs of a row are paired in file order, as interleaved pairs are measured:
    our k-th run with the reference's k-th, or with its last when it has fewer
    (a failed run of ours takes its turn too).
    Measured runs that match no row (a misspelt name) or pair with no run of
    ours are listed on stderr.
    """
    lines = [
        "| reference run | order | reference here: median (min-max) | ours: median (min-max) "
        "| speedup, same machine | peak RSS: ref here / ours | issue's figure: time, peak RSS |",
        "|---|---|---|---|---|---|---|",
    ]
    seen = collections.Counter()
    for r in doc["results"]:
        name = _row_name(r)
        key = (name, r["order"])
        refs = measured.get(key, [])
        ref = refs[min(seen[key], len(refs) - 1)] if refs else None
        seen[key] += 1
        there = (f"{_fmt(r.get('reference_ms'), '{:,.0f} ms')}, "
                 f"{_fmt(r.get('reference_peak_rss_mb'), '{:,.0f} MB')}")
        if r.get("failed"):
            ours, speedup, ours_rss = "failed", "", "—"
        else:
            ours = _ms_range(r["ms_median"], r["ms_min"], r["ms_max"])
            ours_rss = f"{r['peak_rss_mb']:,.0f}"
            speedup = _fmt(ref and ref["median_ms"] / r["ms_median"], "**{:.2f}x**")
        if ref is None:
            here, ref_rss = "not measured", "—"
        else:
            here = _ms_range(ref["median_ms"], ref["min_ms"], ref["max_ms"])
            ref_rss = f"{ref['peak_rss_mb']:,.0f}"
        lines.append(f"| {name} | {r['order']} | {here} | {ours} | {speedup} "
                     f"| {ref_rss} / {ours_rss} MB | {there} |")
    for (row, order), refs in sorted(measured.items()):
        if not seen[(row, order)]:
            print(f"Measured reference run matching no row of ours: {row!r}, {order} order.",
                  file=sys.stderr)
        elif len(refs) > seen[(row, order)]:
            print(f"{len(refs) - seen[(row, order)]} measured reference run(s) of {row!r}, "
                  f"{order} order, paired with no run of ours.", file=sys.stderr)
        elif len(refs) < seen[(row, order)]:
            print(f"{seen[(row, order)] - len(refs)} run(s) of ours of {row!r}, {order} order, "
                  "paired with the reference's last run.", file=sys.stderr)
    return "\n".join(lines)


def main(argv):
    del argv
    if _RENDER.value:
        doc = load_results(_RENDER.value)
        if _MEASURED.value:
            print(render_like_for_like(doc, load_measured_reference(_MEASURED.value)))
        else:
            print(render_table(doc))
        return
    if _MEASURED.value:
        raise app.UsageError("--measured_reference goes with --render.")
    if _ALL.value:
        all_bench(_ONLY.value)
        return
    if _CONFIG.value is None:
        raise app.UsageError("Pass --config, --all_bench or --render.")
    bad_jit = [j for j in _JIT.value or () if str(j).lower() not in ("true", "false")]
    if bad_jit:
        raise app.UsageError(f"--jit takes true and/or false, got {bad_jit}.")
    out_dir = os.path.dirname(os.path.abspath(_OUT.value)) if _OUT.value else None
    if out_dir and not os.path.isdir(out_dir):
        raise app.UsageError(f"--out={_OUT.value}: the directory {out_dir} does not exist.")
    config = _CONFIG.value
    if _SINGLE.value:
        result = measure(config, json.loads(_SINGLE.value))
        print("RESULT " + json.dumps(result), flush=True)
        return
    config_path = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--config="))
    section = bench_section(config)
    extra = [a for a in _config_args(sys.argv[1:]) if not a.startswith("--config=")]
    results = []
    for setting in settings_for(
        config, _JIT.value, _ORDER.value, _PHASE.value, _MODE.value, _BATCH.value,
        _SYNTHETIC.value,
    ):
        result = run_setting(config_path, setting, extra)
        if section:
            with_reference(result, section)
        results.append(result)
        print(json.dumps(result), flush=True)
    if _OUT.value:
        with open(_OUT.value, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    failed = [r for r in results if r.get("failed")]
    if failed:
        raise _failures_error(failed)


if __name__ == "__main__":
    # The package measured is the one of this checkout, whose commit the results
    # record, not whichever `tfmetanas` the environment would import (e.g. another
    # checkout installed with `pip install -e`). Every import of it is below.
    sys.path.insert(0, ROOT)
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
