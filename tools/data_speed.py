r"""Measures episode sampling speed (tasks per second) through `TaskSource.dataset`.

  python tools/data_speed.py [--sources=glyphs,omniglot] [--batches=50]

20-way 1-shot 15-query tasks, meta-batch 16; warm-up batches first (graph
tracing, prefetch fill), then N meta-batches are timed. Omniglot is measured
when $TFMETANAS_DATA_DIR (or --data_root) holds it.
"""

import os
import sys
import time

from absl import app, flags

try:
    import tfmetanas  # noqa: F401
except ImportError:  # Running from a checkout without `pip install -e .`.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

flags.DEFINE_list("sources", ["glyphs", "omniglot"], "Sources to measure.")
flags.DEFINE_integer("batches", 50, "Timed meta-batches.")
flags.DEFINE_integer("warmup", 5, "Untimed meta-batches.")
flags.DEFINE_integer("meta_batch_size", 16, "Tasks per meta-batch.")
flags.DEFINE_string("data_root", "", "Data root ('' -> $TFMETANAS_DATA_DIR).")
FLAGS = flags.FLAGS


def measure(source, batches, warmup, meta_batch_size):
    """Returns tasks per second of `source.dataset(0, meta_batch_size)`."""
    iterator = iter(source.dataset(0, meta_batch_size))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(iterator)
    batch["query_x"].numpy()  # make sure the last batch is materialised
    return batches * meta_batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    from tfmetanas import errors
    from tfmetanas.data import get_task_source

    for name in FLAGS.sources:
        config = {
            "source": name,
            "root": FLAGS.data_root,
            "split_scheme": "vinyals",
            "image_size": 28,
            "ways": 20,
            "shots": 1,
            "queries": 15,
            "rotations": True,
        }
        try:
            start = time.perf_counter()
            source = get_task_source(config, "train", seed=0)
            load = time.perf_counter() - start
        except errors.DataError as e:
            print(f"{name}: skipped ({e})")
            continue
        rate = measure(source, FLAGS.batches, FLAGS.warmup, FLAGS.meta_batch_size)
        print(
            f"{name}: {rate:.0f} tasks/s (20-way 1-shot 15-query, meta-batch "
            f"{FLAGS.meta_batch_size}, {source.num_classes} train classes; load {load:.1f} s)"
        )


if __name__ == "__main__":
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
