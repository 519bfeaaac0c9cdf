r"""Queries needed to find a top-1% NAS-Bench-201 cell: evolution vs random search.

Uses the tabular oracle only (no training): each search queries CIFAR-10 test
accuracies and stops at the first cell in the top 1% (the 157 best of 15,625;
SUMNAS, Ha et al., ICLR 2022, Algorithm 2 for the evolution). Prints the mean,
median and std of the number of distinct queries over seeds, with and without a
FLOPs (MACs) limit; with a limit, the target is the top 1% of the cells that
satisfy it.

  TFMETANAS_DATA_DIR=../shared/data python tools/oracle_search_study.py --seeds=20
"""

import argparse

import numpy as np

from tfmetanas.nas import evolution, nb201, oracle


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--population", type=int, default=20)
    parser.add_argument("--offspring", type=int, default=20)
    parser.add_argument("--mutation_prob", type=float, default=0.2)
    parser.add_argument("--max_macs", type=float, default=100e6, help="MACs limit for row 2")
    parser.add_argument("--table", default=None, help="CSV (default: $TFMETANAS_DATA_DIR)")
    args = parser.parse_args()
    table = oracle.NB201Oracle(args.table)
    print(f"{'limit (MMACs)':>14} {'cells':>6} {'top-1% acc':>10} {'method':>10} "
          f"{'mean':>7} {'median':>7} {'std':>7}")
    for limit in (None, args.max_macs):
        threshold, cells, rows = study(table, limit, args.seeds, args.population,
                                       args.offspring, args.mutation_prob)
        for name, counts in rows.items():
            lim = "none" if limit is None else f"{limit / 1e6:.0f}"
            print(f"{lim:>14} {cells:>6} {threshold:>10.2f} {name:>10} {counts.mean():>7.1f} "
                  f"{np.median(counts):>7.1f} {counts.std():>7.1f}")


if __name__ == "__main__":
    main()
