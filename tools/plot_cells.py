r"""Plots the most common task-specific cells of a METANAS evaluation.

Reads the ``genotypes_<split>.jsonl`` that `tfmetanas-evaluate` writes for a
METANAS workdir: one object per adapted task with a ``genotype`` key (a
`Genotype.to_dict()`) and the pruned network's parameter count ``params``,
and a first line ``{"task": "meta", ...}`` with the meta-architecture. Writes
to --out:

- ``normal_top{i}.png`` / ``reduce_top{i}.png``: the most common normal and
  reduction cell structures (ops and inputs, ignoring weights), drawn with the
  weights of their first occurrence (METANAS Fig. 4);
- ``cell_counts.json``: how often each drawn structure occurred;
- ``meta_architecture.png``: the meta-architecture's pruned cells;
- ``param_histogram.png``: the pruned parameter counts of the tasks (METANAS
  Fig. 5).

python tools/plot_cells.py --genotypes=/tmp/metanas/genotypes_test.jsonl --out=/tmp/cells
"""

import collections
import json
import os

from absl import app, flags

from tfmetanas.nas import genotype as genotype_lib
from tfmetanas.nas import plotting

_GENOTYPES = flags.DEFINE_string("genotypes", None, "JSON-lines file of genotypes.")
_OUT = flags.DEFINE_string("out", None, "Output directory for the PNGs.")
_TOP = flags.DEFINE_integer("top", 3, "How many of the most common cells to draw.")


def read_genotypes(path):
    """Returns ``(task_genotypes, param_counts, meta_genotype or None)``."""
    genotypes, counts, meta = [], [], None
    try:
        f = open(path)
    except OSError as e:
        raise SystemExit(f"Cannot read {path}: {e.strerror}.") from None
    with f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                g = genotype_lib.Genotype.from_dict(record["genotype"])
                count = record.get("params")
                count = None if count is None else int(count)
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise SystemExit(f"{path}:{line_no}: not a genotype record ({e}).") from None
            if record.get("task") == "meta":
                meta = g
                continue
            genotypes.append(g)
            if count is not None:
                counts.append(count)
    if not genotypes:
        raise SystemExit(f"{path} holds no task genotypes.")
    return genotypes, counts, meta


def plot_common_cells(genotypes, out_dir, top=3):
    """Draws the `top` most common normal and reduction cells; returns the counts."""
    os.makedirs(out_dir, exist_ok=True)
    summary = {}
    for kind in ("normal", "reduce"):
        counter = collections.Counter()
        first = {}
        for g in genotypes:
            key = getattr(g, kind).structure()
            counter[key] += 1
            first.setdefault(key, g)
        summary[kind] = []
        for rank, (key, count) in enumerate(counter.most_common(top)):
            g = first[key]
            path = os.path.join(out_dir, f"{kind}_top{rank}.png")
            plotting.plot_genotype(
                g, path, title=f"{kind} cell #{rank + 1}: {count} of {len(genotypes)} tasks"
            )
            summary[kind].append({"png": path, "count": count, "genotype": g.to_dict()})
    with open(os.path.join(out_dir, "cell_counts.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv):
    del argv
    if not _GENOTYPES.value or not _OUT.value:
        raise app.UsageError("--genotypes and --out are required.")
    genotypes, counts, meta = read_genotypes(_GENOTYPES.value)
    plot_common_cells(genotypes, _OUT.value, _TOP.value)
    if meta is not None:
        plotting.plot_genotype(meta, os.path.join(_OUT.value, "meta_architecture.png"),
                               title="meta-architecture (pruned)")
    if counts:
        plotting.plot_size_histogram(counts, os.path.join(_OUT.value, "param_histogram.png"))


if __name__ == "__main__":
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
