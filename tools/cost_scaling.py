r"""How the cost of a meta-iteration grows with meta-batch size, inner steps and image size.

  python tools/cost_scaling.py --out=docs/cost_scaling.json          # measure (~15 min)
  python tools/cost_scaling.py --render=docs/cost_scaling.json \
      --plot=docs/cost_scaling.png                                   # the figure and table

Sweeps one setting at a time around a base config (default: the MAML++
Omniglot 5-way 1-shot benchmark row, second order, on the `glyphs` source so
that any image size works without data), each point measured by
`tools/benchmark.py` in its own process: median ms per meta-iteration, first
call, peak memory and the FLOPs of the traced step. The figure plots time and
FLOPs against each swept value, both normalised to the smallest point, so a
line at the FLOP ratio means the cost grows exactly with the work.
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")

flags.DEFINE_string("config", os.path.join(ROOT, "configs/bench/mamlpp_omniglot_5w1s_mb8.py"),
                    "Base config.")
flags.DEFINE_string("order", "second", "Derivative order (benchmark --order).")
flags.DEFINE_list("meta_batch_sizes", ["1", "2", "4", "8", "16"], "Meta-batch sweep.")
flags.DEFINE_list("inner_steps", ["1", "2", "3", "5", "8"], "Inner-step sweep.")
flags.DEFINE_list("image_sizes", ["16", "28", "42", "56"], "Image-size sweep (pixels).")
flags.DEFINE_integer("repeats", 3, "Timed calls per point.")
flags.DEFINE_string("out", "", "Write the measurements (JSON) here.")
flags.DEFINE_string("render", "", "Read measurements from this JSON instead of measuring.")
flags.DEFINE_string("plot", "", "Write the figure here (PNG).")
FLAGS = flags.FLAGS

# Held fixed while another setting is swept (the base row's values).
BASE = {"meta_batch_size": 8, "inner_steps": 5, "image_size": 28}
SWEEPS = (("meta_batch_size", "meta-batch size"), ("inner_steps", "inner steps"),
          ("image_size", "image size (pixels)"))


def _point(setting):
    """Runs tools/benchmark.py for one setting; returns its JSON result."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "point.json")
        cmd = [
            sys.executable, os.path.join(HERE, "benchmark.py"), f"--config={FLAGS.config}",
            f"--order={FLAGS.order}", "--jit=false", f"--repeats={FLAGS.repeats}",
            "--warmup=1", "--roofline_size=0", f"--out={out}",
            f"--meta_batch_size={setting['meta_batch_size']}",
            f"--config.inner.steps={setting['inner_steps']}",
            f"--config.data.image_size={setting['image_size']}",
            "--config.data.source=glyphs",
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            result = json.loads(f.readline())
    result.update(setting)
    return result


def measure():
    values = {"meta_batch_size": FLAGS.meta_batch_sizes, "inner_steps": FLAGS.inner_steps,
              "image_size": FLAGS.image_sizes}
    points, done = [], {}
    for key, _ in SWEEPS:
        for value in values[key]:
            setting = dict(BASE, **{key: int(value)})
            ident = tuple(sorted(setting.items()))
            if ident not in done:  # The base point belongs to every sweep: measured once.
                done[ident] = _point(setting)
                r = done[ident]
                print(f"{key}={value}: {r['ms_median']:.0f} ms, {r.get('gflop') or 0:.1f} GFLOP, "
                      f"peak {r['peak_rss_mb']:.0f} MB", flush=True)
            points.append({"sweep": key, "setting": setting, "result": done[ident]})
    return points


def table(points):
    lines = ["| swept | value | ms / meta-iteration (min-max) | GFLOP | GFLOP/s | first call | peak RSS |",
             "|---|---|---|---|---|---|---|"]
    for p in points:
        r, key = p["result"], p["sweep"]
        gflop = r.get("gflop")
        rate = f"{gflop / r['ms_median'] * 1000:.1f}" if gflop else ""
        lines.append(
            f"| {key} | {p['setting'][key]} | {r['ms_median']:,.0f} ({r['ms_min']:,.0f}-"
            f"{r['ms_max']:,.0f}) | {gflop or 0:.1f} | {rate} | {r['first_call_s']:.1f} s | "
            f"{r['peak_rss_mb']:,.0f} MB |")
    return "\n".join(lines)


def plot(points, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SWEEPS), figsize=(4.2 * len(SWEEPS), 3.6))
    for ax, (key, label) in zip(axes, SWEEPS):
        pts = sorted((p for p in points if p["sweep"] == key), key=lambda p: p["setting"][key])
        xs = [p["setting"][key] for p in pts]
        ms = [p["result"]["ms_median"] for p in pts]
        gf = [p["result"].get("gflop") or float("nan") for p in pts]
        ax.plot(xs, [m / ms[0] for m in ms], "o-", label="time")
        ax.plot(xs, [g / gf[0] for g in gf], "s--", label="FLOPs")
        for x, m in zip(xs, ms):
            ax.annotate(f"{m:,.0f} ms", (x, m / ms[0]), textcoords="offset points",
                        xytext=(0, 6), fontsize=7, ha="center")
        ax.set_xlabel(label)
        ax.set_ylabel(f"relative to {key} = {xs[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Cost of one meta-iteration ({os.path.basename(FLAGS.config)}, "
                 f"{FLAGS.order} order; others at {BASE})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    if FLAGS.render:
        with open(FLAGS.render) as f:
            points = json.load(f)
    else:
        points = measure()
        if FLAGS.out:
            with open(FLAGS.out, "w") as f:
                json.dump(points, f, indent=1)
    print(table(points))
    if FLAGS.plot:
        plot(points, FLAGS.plot)


if __name__ == "__main__":
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
