r"""Plots validation curves (metric vs meta-iterations and vs training time).

  python tools/plot_curves.py --workdirs=/tmp/a,/tmp/b --labels=FOMAML,Reptile \
      --out=docs/omniglot_5w1s_curves.png [--metric=accuracy_mean]

Reads each workdir's `val_curve.jsonl` (written by the trainer at every
validation).
"""

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402

_WORKDIRS = flags.DEFINE_list("workdirs", None, "Workdirs to plot.")
_LABELS = flags.DEFINE_list("labels", None, "Legend labels (default: workdir names).")
_OUT = flags.DEFINE_string("out", None, "PNG to write.")
_METRIC = flags.DEFINE_string("metric", None, "Key to plot (default: accuracy_mean or mse_mean).")
_TITLE = flags.DEFINE_string("title", "", "Figure title.")


def read_curve(workdir):
    path = os.path.join(workdir, "val_curve.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv):
    del argv
    labels = _LABELS.value or [os.path.basename(w.rstrip("/")) for w in _WORKDIRS.value]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for workdir, label in zip(_WORKDIRS.value, labels):
        curve = read_curve(workdir)
        metric = _METRIC.value or ("accuracy_mean" if "accuracy_mean" in curve[0] else "mse_mean")
        steps = [c["step"] for c in curve]
        minutes = [c["train_seconds"] / 60.0 for c in curve]
        values = [c[metric] for c in curve]
        axes[0].plot(steps, values, marker="o", ms=3, label=label)
        axes[1].plot(minutes, values, marker="o", ms=3, label=label)
    axes[0].set_xlabel("meta-iterations")
    axes[1].set_xlabel("training wall time (minutes)")
    for ax in axes:
        ax.set_ylabel(metric.replace("_", " ") + (" (%)" if "accuracy" in metric else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    if _TITLE.value:
        fig.suptitle(_TITLE.value)
    fig.tight_layout()
    fig.savefig(_OUT.value, dpi=110)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdirs", "out"])
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
