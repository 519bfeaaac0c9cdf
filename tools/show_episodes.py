r"""Renders one few-shot task (support and query images with their labels) to a PNG.

  python tools/show_episodes.py --config=configs/quickstart.py --out=/tmp/task.png \
      --split=train --index=0

`config.data` is the data section and `config.train.seed` the seed, as in
training, so the picture shows exactly the task the trainer sees at that index.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

try:
    import tfmetanas  # noqa: F401
except ImportError:  # Running from a checkout without `pip install -e .`.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

config_flags.DEFINE_config_file("config", lock_config=True)
flags.DEFINE_string("out", None, "Output PNG path.", required=True)
flags.DEFINE_enum("split", "train", ["train", "val", "test"], "Split to sample from.")
flags.DEFINE_integer("index", 0, "Task index.")
FLAGS = flags.FLAGS


def render_task(task, path, title=""):
    """Draws a task's support row(s) above its query rows and saves a PNG.

    Args:
      task: dict of numpy arrays from `TaskSource.task` (classification).
      path: output file.
      title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    support_x, support_y = np.asarray(task["support_x"]), np.asarray(task["support_y"])
    query_x, query_y = np.asarray(task["query_x"]), np.asarray(task["query_y"])
    # One column per label; the k-th image of a label goes to the k-th row of
    # its part, so each column shows one class.
    cols = int(support_y.max()) + 1
    support_rows = int(np.bincount(support_y).max())
    query_rows = int(np.bincount(query_y).max())
    rows = support_rows + query_rows
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.25 * rows + 0.5), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for part, (xs, ys, row0) in {
        "support": (support_x, support_y, 0),
        "query": (query_x, query_y, support_rows),
    }.items():
        seen = np.zeros(cols, int)
        for x, y in zip(xs, ys):
            ax = axes[row0 + seen[y], y]
            seen[y] += 1
            image = x[..., 0] if x.shape[-1] == 1 else x
            ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_title(
                f"{part[0]}:{int(y)}", fontsize=7, color="C0" if part == "support" else "C3"
            )
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    from tfmetanas.data import get_task_source

    config = FLAGS.config
    source = get_task_source(config.data, FLAGS.split, int(config.train.seed))
    if source.kind != "classification":
        raise app.UsageError(
            f"show_episodes draws image tasks; source {config.data.source!r} is {source.kind}."
        )
    task = {k: v.numpy() for k, v in source.task(FLAGS.index).items()}
    title = (
        f"{config.data.source} {FLAGS.split} task {FLAGS.index}: {source.ways}-way "
        f"{source.shots}-shot, {source.queries} queries (s: support, q: query)"
    )
    render_task(task, FLAGS.out, title)
    print(f"Wrote {FLAGS.out}")


if __name__ == "__main__":
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
