r"""Queries needed to find a top-1% NAS-Bench-201 cell: evolution vs random search.

Uses the tabular oracle only (no training): each search queries CIFAR-10 test
accuracies and stops at the first cell in the top 1% (the 157 best of 15,625;
SUMNAS, Ha et al., ICLR 2022, Algorithm 2 for the evolution). Prints the mean,
median and std of the number of distinct queries over seeds, with and without a
FLOPs (MACs) limit; with a limit, the target is the top 1% of the cells that
satisfy it.

  TFMETANAS_DATA_DIR=../shared/data python tools/oracle_search_study.py --seeds=20
"""

import numpy as np
from absl import app, flags

from tfmetanas.nas import evolution, nb201, oracle

_SEEDS = flags.DEFINE_integer("seeds", 20, "Searches per method and limit.")
_POPULATION = flags.DEFINE_integer("population", 20, "Evolution: population size.")
_OFFSPRING = flags.DEFINE_integer("offspring", 20, "Evolution: offspring per generation.")
_MUTATION = flags.DEFINE_float("mutation_prob", 0.2, "Evolution: mutation probability.")
_MAX_MACS = flags.DEFINE_float("max_macs", 100e6, "MACs limit of the second row.")
_TABLE = flags.DEFINE_string("table", None, "The accuracy CSV (default: from $TFMETANAS_DATA_DIR).")


def study(table, max_macs, seeds, population, offspring, mutation_prob):
    macs = table.macs_table()
    acc = table.accuracy["cifar10"]
    valid = np.ones_like(acc, bool) if max_macs is None else macs <= max_macs
    k = int(np.ceil(0.01 * valid.sum()))
    threshold = np.sort(acc[valid])[::-1][k - 1]
    constraint = None if max_macs is None else (lambda a: table.macs(a) <= max_macs)
    stop = lambda a, s: s >= threshold  # noqa: E731
    rows = {}
    for name in ("evolution", "random"):
        counts = []
        for seed in range(seeds):
            if name == "evolution":
                r = evolution.evolutionary_search(
                    table.accuracy_of, nb201.NUM_EDGES, nb201.NUM_OPS, generations=10_000,
                    population=population, offspring=offspring, mutation_prob=mutation_prob,
                    constraint=constraint, seed=seed, stop_fn=stop)
            else:
                r = evolution.random_search(table.accuracy_of, nb201.NUM_EDGES, nb201.NUM_OPS,
                                            num_samples=15_625, constraint=constraint,
                                            seed=seed, stop_fn=stop)
            counts.append(r.num_queries)
        rows[name] = np.asarray(counts)
    return threshold, int(valid.sum()), rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    table = oracle.NB201Oracle(_TABLE.value)
    print(f"{'limit (MMACs)':>14} {'cells':>6} {'top-1% acc':>10} {'method':>10} "
          f"{'mean':>7} {'median':>7} {'std':>7}")
    for limit in (None, _MAX_MACS.value):
        threshold, cells, rows = study(table, limit, _SEEDS.value, _POPULATION.value,
                                       _OFFSPRING.value, _MUTATION.value)
        for name, counts in rows.items():
            lim = "none" if limit is None else f"{limit / 1e6:.0f}"
            print(f"{lim:>14} {cells:>6} {threshold:>10.2f} {name:>10} {counts.mean():>7.1f} "
                  f"{np.median(counts):>7.1f} {counts.std():>7.1f}")


if __name__ == "__main__":
    from tfmetanas import cli

    app.run(cli.app_main(main), flags_parser=cli.flags_parser())
