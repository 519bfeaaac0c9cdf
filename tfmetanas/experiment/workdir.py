"""The workdir of a run: resolved config, checkpoints, summary writers.

Layout (DESIGN.md, "Outputs of a run"):
  config.json        the resolved config
  checkpoints/       tf.train.CheckpointManager (atomic writes; resume is automatic)
  checkpoints/best/  the best-by-validation checkpoint(s)
  train/, eval/      TensorBoard event files
  eval_<split>.json  evaluation results
"""

import json
import os
import tempfile

import tensorflow as tf

from tfmetanas import errors

# Keys that may differ between a run and its resumption (they do not change
# what the checkpoint holds).
RESUMABLE_KEYS = (
    "train.steps", "train.eval_every", "train.log_every", "train.checkpoint_every",
    "train.time_limit_minutes", "train.jit_compile", "train.progress",
    "train.distribute", "train.devices", "train.tpu",
    "train.intra_op_threads", "train.inter_op_threads", "train.trim_interval", "meta.parallel_tasks",
    "inner.lr", "meta.lr", "inner.while_loop", "model.darts.soft_prune",
    "model.darts.running_stats", "model.darts.recompute_cells", "model.darts.max_pool_gradient",
    "train.skip_graph_optimizations", "model.selection",
    "eval.num_tasks", "eval.num_val_tasks", "data.root",
)


def _write_atomic(path, write):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path, obj):
    """Writes JSON to `path` through a temporary file and a rename."""

    def write(f):
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")

    _write_atomic(path, write)


def write_jsonl_atomic(path, lines):
    """Writes one JSON object per line to `path`, atomically."""

    def write(f):
        for line in lines:
            f.write(json.dumps(line, sort_keys=True, default=str) + "\n")

    _write_atomic(path, write)


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_to_dict(config):
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)


def prepare_workdir(workdir, config, write=True):
    """Creates `workdir` and writes `config.json` (with `write`; non-chief workers only check).

    If the workdir already holds a run, its config must agree with `config`
    except for the keys in `RESUMABLE_KEYS`; otherwise a `CheckpointError`
    names the differing keys (resuming with another model would fail deep in
    TensorFlow, or silently train something else).
    """
    if not str(workdir or "").strip():
        raise errors.ConfigError("--workdir is empty; name the run directory.")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise errors.ConfigError(f"--workdir={workdir} is a file, not a directory.")
    if write:
        os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    new = config_to_dict(config)
    if os.path.exists(path) and has_checkpoint(workdir):
        a, b = _flatten(_read_config(path)), _flatten(new)
        # A key the old run's config lacks was added to the package since: the
        # run is resumable with it (its default), not "another config".
        diff = sorted(
            k for k in set(a) | set(b)
            if k in a and a.get(k) != b.get(k) and k not in RESUMABLE_KEYS
        )
        if diff:
            details = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:10])
            raise errors.CheckpointError(
                f"The workdir {workdir} holds a run with another config ({details}). "
                "Use a new --workdir, or the same config to resume."
            )
    if write:
        write_json_atomic(path, new)
    return new


def load_config(workdir):
    """The `config.json` of a workdir as an ml_collections.ConfigDict."""
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise errors.CheckpointError(
            f"{workdir} is not a tfmetanas workdir: no config.json. Train first with "
            f"`tfmetanas-train --config=... --workdir={workdir}`."
        )
    return ml_collections.ConfigDict(_read_config(path))


def _read_config(path):
    """The dict in a workdir's `config.json`; CheckpointError if it is not one."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise errors.CheckpointError(
            f"{path} is unreadable or corrupt ({e.__class__.__name__}: {e}); restore it, or "
            "use a new --workdir.") from e
    if not isinstance(config, dict) or not all(
            isinstance(config.get(k), dict) for k in ("train", "data", "model")):
        raise errors.CheckpointError(
            f"{path} does not hold a tfmetanas config (a dict with train, data and model "
            "sections); restore it, or use a new --workdir.")
    return config


def checkpoint_dir(workdir, which="latest"):
    return os.path.join(workdir, "checkpoints", "best" if which == "best" else "")


def _latest(directory):
    """`tf.train.latest_checkpoint`, with a corrupt state file as a CheckpointError."""
    try:
        return tf.train.latest_checkpoint(directory)
    except (ValueError, tf.errors.OpError) as e:
        raise errors.CheckpointError(
            f"The checkpoint state file in {directory} is corrupt ({e.__class__.__name__}); "
            "restore it, or use a new --workdir.") from e


def has_checkpoint(workdir):
    return _latest(os.path.join(workdir, "checkpoints")) is not None


def checkpoint_manager(workdir, checkpoint, which="latest", max_to_keep=3):
    """A CheckpointManager in ``workdir/checkpoints`` (or ``.../best``)."""
    return tf.train.CheckpointManager(
        checkpoint, checkpoint_dir(workdir, which), max_to_keep=max_to_keep
    )


def find_checkpoint(workdir, which="latest"):
    """The checkpoint `restore` reads: the newest ``best`` one (falling back to
    the latest where the run kept none) or the latest one.

    Raises:
      ConfigError: `which` is neither "best" nor "latest".
      CheckpointError: no such checkpoint (the message says whether the other
        kind exists), or a corrupt checkpoint state file.
    """
    if which not in ("latest", "best"):
        raise errors.ConfigError(f"--checkpoint must be 'best' or 'latest', not {which!r}.")
    best = _latest(checkpoint_dir(workdir, "best")) if which == "best" else None
    path = best or _latest(checkpoint_dir(workdir, "latest"))
    if path is not None:
        return path
    directory = os.path.join(workdir, "checkpoints")
    if which == "latest" and _latest(checkpoint_dir(workdir, "best")) is not None:
        raise errors.CheckpointError(
            f"No latest checkpoint in {directory}, only best-by-validation ones in "
            f"{checkpoint_dir(workdir, 'best')}: use --checkpoint=best.")
    raise errors.CheckpointError(
        f"No checkpoint in {directory}: train first with "
        f"`tfmetanas-train --config=... --workdir={workdir}`, or check --workdir.")


def restore(workdir, checkpoint, which="latest"):
    """Restores `checkpoint` from the workdir (`find_checkpoint`); returns the path used."""
    path = find_checkpoint(workdir, which)
    try:
        checkpoint.restore(path).expect_partial()
    except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:
        first_line = (str(e).splitlines() or [""])[0][:300]
        raise errors.CheckpointError(
            f"The checkpoint {path} could not be restored: it is corrupt, or does not fit this "
            f"config's model ({e.__class__.__name__}: {first_line})."
        ) from e
    return path


def summary_writers(workdir):
    """One writer per subdirectory: ``train/`` and ``eval/``."""
    return {
        name: tf.summary.create_file_writer(os.path.join(workdir, name))
        for name in ("train", "eval")
    }
