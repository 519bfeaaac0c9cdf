"""Meta-training on several devices and machines: the strategy, the chief, the task stream.

`train.distribute` picks a `tf.distribute` strategy (DESIGN.md, "Distribution"):

- ``none``: the default (no-op) strategy, one replica;
- ``mirrored``: `MirroredStrategy` over ``train.devices`` (e.g.
  ``("/gpu:0", "/gpu:1")``) or, when that is empty, every local GPU;
- ``multi_worker``: `MultiWorkerMirroredStrategy`, the cluster and this
  process's role read from the ``TF_CONFIG`` environment variable;
- ``tpu``: `TPUStrategy` on ``train.tpu`` ("" for the local or
  environment-configured TPU).

The meta-step is the same `strategy.run(replica_step)` for all of them. The
global meta-batch is ``meta.meta_batch_size``; every replica holds
``meta_batch_size / replicas`` tasks of it. Global meta-step s holds tasks
``s*B .. s*B + B - 1`` of the deterministic task stream, and replica r (in
the global order: worker by worker, local device by local device) holds the
contiguous slice ``s*B + r*b .. s*B + r*b + b - 1`` with ``b = B / replicas``.
`task_dataset` builds exactly that slice per input pipeline, by index, so a
run resumed on another number of devices sees every task exactly once per
step, and no `tf.data` auto-sharding is involved.
"""

import os
import shutil
import tempfile

import tensorflow as tf
from absl import logging

from tfmetanas import errors
from tfmetanas.data import base as data_base

KINDS = ("none", "mirrored", "multi_worker", "tpu")

# One strategy per process and configuration: MultiWorkerMirroredStrategy and
# TPU initialisation can happen only once in a process.
_STRATEGIES = {}
# All-reduce packs (multi_worker): larger than the meta-gradients of every
# shipped config, so a meta-step's gradient all-reduce is one collective.
_BYTES_PER_PACK = 256 * 1024 * 1024


def _setting(config):
    train = config.train
    kind = str(train.get("distribute", "none") or "none")
    devices = tuple(str(d) for d in (train.get("devices", ()) or ()))
    tpu = str(train.get("tpu", "") or "")
    return kind, devices, tpu


def configure_threads(config):
    """Applies ``train.intra_op_threads`` / ``train.inter_op_threads`` (0: TF's default).

    Thread pools are fixed when the TensorFlow runtime starts, so this must run
    before the first op; the trainer and `Experiment` call it first thing. In a
    process whose runtime already started with other settings (e.g. a test
    session running several configs) it logs a warning and keeps them: the
    settings change speed, never results.

    One thread per op and as many ops in parallel as there are cores
    (``intra_op_threads=1``) suits graphs of many small independent ops, such
    as the METANAS search network, and small convolutions with several tasks
    at once (``meta.parallel_tasks``, the Omniglot configs); large images
    (mini-ImageNet) keep the default (docs/performance.md).
    """
    wanted = {
        "intra": int(config.train.get("intra_op_threads", 0) or 0),
        "inter": int(config.train.get("inter_op_threads", 0) or 0),
    }
    if any(n < 0 for n in wanted.values()):
        raise errors.ConfigError(
            f"train.intra_op_threads and train.inter_op_threads must be >= 0, got {wanted}."
        )
    threading = tf.config.threading
    current = {
        "intra": threading.get_intra_op_parallelism_threads(),
        "inter": threading.get_inter_op_parallelism_threads(),
    }
    setters = {
        "intra": threading.set_intra_op_parallelism_threads,
        "inter": threading.set_inter_op_parallelism_threads,
    }
    for kind, n in wanted.items():
        if n and n != current[kind]:
            try:
                setters[kind](n)
            except RuntimeError:
                logging.warning(
                    "train.%s_op_threads=%d not applied: the TensorFlow runtime already "
                    "started in this process (speed only; results do not change).", kind, n)


def make_strategy(config):
    """The `tf.distribute.Strategy` that ``config.train.distribute`` names.

    Raises:
      ConfigError: an unknown kind, `train.devices` with a kind other than
        ``mirrored``, ``multi_worker`` without a usable ``TF_CONFIG``, or no TPU.
    """
    kind, devices, tpu = _setting(config)
    if kind not in KINDS:
        raise errors.ConfigError(
            f"Unknown train.distribute {kind!r}; valid: {', '.join(repr(k) for k in KINDS)}."
        )
    if devices and kind != "mirrored":
        raise errors.ConfigError(
            f"train.devices={list(devices)} is only read by train.distribute='mirrored' "
            f"(this config has {kind!r}); clear it or set train.distribute='mirrored'."
        )
    key = (kind, devices, tpu)
    if key in _STRATEGIES:
        return _STRATEGIES[key]
    if kind == "none":
        strategy = tf.distribute.get_strategy()
    elif kind == "mirrored":
        strategy = _mirrored(devices)
    elif kind == "multi_worker":
        strategy = _multi_worker()
    else:
        strategy = _tpu(tpu)
    _STRATEGIES[key] = strategy
    return strategy


def _mirrored(devices):
    if devices:
        def key(name):
            spec = tf.DeviceSpec.from_string(name)
            return (str(spec.device_type or "").upper(), int(spec.device_index or 0))

        available = [d.name for d in tf.config.list_logical_devices()]
        missing = [d for d in devices if key(d) not in {key(a) for a in available}]
        if missing:
            raise errors.ConfigError(
                f"train.devices names devices this process does not have: {missing}. "
                f"Available: {available}."
            )
        return tf.distribute.MirroredStrategy(devices=list(devices))
    return tf.distribute.MirroredStrategy()


def _multi_worker():
    if not os.environ.get("TF_CONFIG"):
        raise errors.ConfigError(
            "train.distribute='multi_worker' reads the cluster from the TF_CONFIG environment "
            "variable, which is not set. Every worker needs e.g. "
            'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\' (index 1 on the second); see README.md.'
        )
    try:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if not resolver.cluster_spec().as_dict():
            raise ValueError("TF_CONFIG has no 'cluster'")
    except ValueError as e:
        raise errors.ConfigError(f"TF_CONFIG is not usable for multi_worker: {e}.") from e
    # One meta-step all-reduces a few lists of many small tensors (the
    # meta-gradients, the BN statistics, the metrics); packed, each list is a
    # single collective instead of one round trip per tensor between machines.
    options = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=_BYTES_PER_PACK)
    return tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=resolver, communication_options=options
    )


def _tpu(address):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as e:
        raise errors.ConfigError(
            f"train.distribute='tpu' found no TPU at train.tpu={address!r} ({e}). Run on a TPU "
            "VM, or set train.tpu to the TPU's name or grpc:// address."
        ) from e
    return tf.distribute.TPUStrategy(resolver)


def check_meta_batch(config, strategy):
    """Refuses a global meta-batch that does not split evenly over the replicas."""
    batch, replicas = int(config.meta.meta_batch_size), strategy.num_replicas_in_sync
    if batch % replicas:
        lower, upper = batch // replicas * replicas, -(-batch // replicas) * replicas
        raise errors.ConfigError(
            f"meta.meta_batch_size={batch} does not split over the {replicas} replicas of "
            f"train.distribute={str(config.train.get('distribute', 'none'))!r}: every replica "
            f"must hold the same number of tasks. Use a multiple of {replicas}, e.g. "
            f"{lower or replicas} or {upper}."
        )


def _cluster_role(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or isinstance(
        resolver, tf.distribute.cluster_resolver.TPUClusterResolver
    ):
        return None, None, {}
    return resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()


def is_chief(strategy):
    """Whether this process writes the run's outputs (checkpoints, summaries, JSON).

    The ``chief`` task if the cluster has one, else worker 0; a process that
    is not part of a cluster is always the chief.
    """
    task_type, task_id, cluster = _cluster_role(strategy)
    if not cluster or task_type is None:
        return True
    if "chief" in cluster:
        return task_type == "chief"
    return task_type == "worker" and int(task_id or 0) == 0


def num_workers(strategy):
    """Processes that take part in every step (1 unless multi-worker)."""
    _, _, cluster = _cluster_role(strategy)
    return max(sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")), 1)


def any_worker(strategy, flag):
    """True on every worker if `flag` is true on any (a collective: call it on all)."""
    if num_workers(strategy) == 1:
        return bool(flag)
    def count(value):
        # All-reduced in the replica context: `strategy.reduce` refuses the
        # plain per-worker tensors of MultiWorkerMirroredStrategy.
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, value)

    value = strategy.run(count, args=(tf.constant(1.0 if flag else 0.0),))
    return float(strategy.experimental_local_results(value)[0]) > 0


class WorkerScratch:
    """Where a non-chief worker saves checkpoints: a temporary directory it deletes.

    Every worker calls the checkpoint managers' `save` at the same steps (the
    standard MultiWorkerMirroredStrategy pattern: saving may read variables
    that need every worker), but only the chief writes into the workdir.
    """

    def __init__(self, strategy):
        self.path = None
        if not is_chief(strategy):
            task_type, task_id, _ = _cluster_role(strategy)
            self.path = tempfile.mkdtemp(prefix=f"tfmetanas-{task_type}{task_id}-")

    def workdir(self, workdir):
        """The directory this process saves checkpoints under."""
        return workdir if self.path is None else self.path

    def cleanup(self):
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


def task_dataset(strategy, source, start_step, meta_batch_size):
    """Per-replica meta-batches of the task stream, from global step `start_step` on.

    Each input pipeline (one per worker) builds the task indices of exactly
    its replicas' slices (module docstring), batched per replica; its local
    replicas receive consecutive elements in device order, as
    `distribute_datasets_from_function` hands them out.

    Args:
      strategy: the `tf.distribute.Strategy`.
      source: a `TaskSource` (task i is a pure function of (seed, i)).
      start_step: the first global meta-step (resume point).
      meta_batch_size: the global meta-batch B.

    Returns:
      A distributed dataset; iterate it and pass elements to `strategy.run`.
    """
    global_batch = int(meta_batch_size)
    replicas = strategy.num_replicas_in_sync
    local = global_batch // replicas
    start = int(start_step)

    def dataset_fn(context):
        pipelines = context.num_input_pipelines
        if replicas % pipelines:
            raise errors.ConfigError(
                f"{replicas} replicas do not split evenly over {pipelines} workers: give every "
                "worker the same number of devices."
            )
        per_pipeline = replicas // pipelines
        first_replica = context.input_pipeline_id * per_pipeline
        tasks_per_step = per_pipeline * local

        def task_index(k):
            step = start + k // tasks_per_step
            return step * global_batch + first_replica * local + k % tasks_per_step

        ds = tf.data.Dataset.counter(dtype=tf.int64).map(task_index)
        ds = ds.map(source.task, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(local, drop_remainder=True)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(data_base.dataset_options())

    return strategy.distribute_datasets_from_function(dataset_fn)
