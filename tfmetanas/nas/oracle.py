"""Tabular NAS-Bench-201 oracle: final accuracies of all 15,625 cells.

SUMNAS (Ha et al., ICLR 2022, Section 5.1, Table 4) ranks supernet
predictions against NAS-Bench-201's 200-epoch test accuracies (Dong & Yang,
arXiv:2001.00326; NATS-Bench, Dong et al., arXiv:2009.00437). The table
``nb201/nb201_test_accuracy_200ep.csv`` (columns
``CIFAR10TestAccuracy200Epochs, CIFAR100TestAccuracy200Epochs,
ImageNetTestAccuracy200Epochs, ArchitectureString, UniqueString``) lists the
cells in the benchmark's official index order, which is a fixed shuffle (row
r is benchmark index r); the oracle reads the mapping from the table.

The oracle also gives analytic FLOPs (MACs) at the benchmark's sizes (C=16,
N=5; 32x32 for CIFAR, 16x16 for ImageNet16-120) for FLOPs-limited search; the
numbers agree with the benchmark's published ones (e.g. 220.11968 M MACs for
six ``nor_conv_3x3`` on CIFAR-10).
"""

import csv
import os

import numpy as np

from tfmetanas import errors
from tfmetanas.nas import flops, nb201

DATA_ENV = "TFMETANAS_DATA_DIR"
TABLE = os.path.join("nb201", "nb201_test_accuracy_200ep.csv")
DATASETS = {
    "cifar10": ("CIFAR10TestAccuracy200Epochs", 10, 32),
    "cifar100": ("CIFAR100TestAccuracy200Epochs", 100, 32),
    "ImageNet16-120": ("ImageNetTestAccuracy200Epochs", 120, 16),
}


def default_table_path(path=None):
    """The table's path: `path`, a directory holding it, or ``$TFMETANAS_DATA_DIR``.

    Raises:
      errors.DataError: when no path is given and the variable is unset, or
        the file does not exist.
    """
    if path is None:
        root = os.environ.get(DATA_ENV)
        if not root:
            raise errors.DataError(
                f"No NAS-Bench-201 table: pass its path, or set {DATA_ENV} to the data directory "
                f"holding {TABLE} (in this project: ../shared/data)."
            )
        path = os.path.join(root, TABLE)
    elif os.path.isdir(path):
        candidates = [os.path.join(path, TABLE), os.path.join(path, os.path.basename(TABLE))]
        path = next((p for p in candidates if os.path.exists(p)), candidates[0])
    if not os.path.exists(path):
        raise errors.DataError(
            f"NAS-Bench-201 table not found at {path}. Expected the CSV {os.path.basename(TABLE)} "
            "with NAS-Bench-201/NATS-Bench 200-epoch test accuracies (see shared/data/README.md)."
        )
    return path


class NB201Oracle:
    """Accuracy lookups by benchmark index, architecture string or op tuple.

    Args:
      path: the CSV, a directory holding it, or None for ``$TFMETANAS_DATA_DIR``.

    Attributes:
      strings: architecture string of each benchmark index.
      archs: int32 [15625, 6] op tuples in benchmark order.
      accuracy: ``{dataset: float64 [15625]}`` in percent.
    """

    def __init__(self, path=None):
        self.path = default_table_path(path)
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        missing = [c for c, _, _ in DATASETS.values() if rows and c not in rows[0]]
        if len(rows) != nb201.NUM_ARCHS or missing or "ArchitectureString" not in rows[0]:
            raise errors.DataError(
                f"{self.path} is not the NAS-Bench-201 table: expected {nb201.NUM_ARCHS} rows with "
                f"columns {[c for c, _, _ in DATASETS.values()] + ['ArchitectureString']}, got "
                f"{len(rows)} rows (missing columns: {missing})."
            )
        self.strings = [r["ArchitectureString"] for r in rows]
        self.unique = [r.get("UniqueString", "") for r in rows]
        self.archs = np.asarray([nb201.string_to_arch(s) for s in self.strings], np.int32)
        self.accuracy = {
            name: np.asarray([float(r[column]) for r in rows], np.float64)
            for name, (column, _, _) in DATASETS.items()
        }
        # canonical index -> benchmark index
        canonical = self.archs @ (nb201.NUM_OPS ** np.arange(nb201.NUM_EDGES - 1, -1, -1))
        self._benchmark_of = np.full(nb201.NUM_ARCHS, -1, np.int64)
        self._benchmark_of[canonical] = np.arange(nb201.NUM_ARCHS)
        if (self._benchmark_of < 0).any():
            raise errors.DataError(f"{self.path} lists some cells twice and misses others.")
        self._macs = {}

    def _check_dataset(self, dataset):
        if dataset not in DATASETS:
            raise errors.ConfigError(f"Unknown NAS-Bench-201 dataset {dataset!r}; valid: {list(DATASETS)}.")

    def index(self, arch):
        """Benchmark index of a cell given as string, op tuple or (canonical) tuple."""
        if isinstance(arch, (int, np.integer)):
            raise TypeError("An int is ambiguous here: pass a string or op tuple.")
        return int(self._benchmark_of[nb201.arch_to_index(nb201.to_arch(arch))])

    def arch(self, index):
        """Op tuple of benchmark index `index`."""
        return tuple(int(a) for a in self.archs[int(index)])

    def accuracy_of(self, arch, dataset="cifar10"):
        """Test accuracy (percent) of a cell: benchmark index (int), string or tuple."""
        self._check_dataset(dataset)
        index = int(arch) if isinstance(arch, (int, np.integer)) else self.index(arch)
        return float(self.accuracy[dataset][index])

    def top_fraction_threshold(self, fraction=0.01, dataset="cifar10"):
        """Accuracy of the ceil(fraction * 15625)-th best cell (top-1%: 157th)."""
        self._check_dataset(dataset)
        k = int(np.ceil(fraction * nb201.NUM_ARCHS))
        return float(np.sort(self.accuracy[dataset])[::-1][k - 1])

    def best(self, dataset="cifar10", max_macs=None):
        """``(arch, accuracy)`` of the best cell (optionally within a MACs budget)."""
        acc = self.accuracy[dataset].copy()
        if max_macs is not None:
            acc[self.macs_table(dataset) > max_macs] = -np.inf
        i = int(np.argmax(acc))
        return self.arch(i), float(acc[i])

    def macs(self, arch, dataset="cifar10"):
        """Analytic MACs of a cell at the benchmark's sizes (C=16, N=5)."""
        self._check_dataset(dataset)
        _, classes, size = DATASETS[dataset]
        return flops.nb201_cost(nb201.to_arch(arch), channels=16, cells_per_stage=5,
                                image_size=size, num_classes=classes).macs

    def macs_table(self, dataset="cifar10"):
        """MACs of every cell in benchmark order (cached)."""
        if dataset not in self._macs:
            self._macs[dataset] = benchmark_macs(self.archs, dataset)
        return self._macs[dataset]


def benchmark_macs(archs, dataset="cifar10"):
    """Vectorised analytic MACs of cells (int array [n, 6]) at benchmark sizes."""
    _, classes, size = DATASETS[dataset]
    archs = np.asarray(archs)
    base = flops.nb201_cost((0,) * 6, channels=16, cells_per_stage=5, image_size=size,
                            num_classes=classes).macs
    # Per-op MACs per cell summed over stages: only the convs cost anything.
    per_op = np.zeros(nb201.NUM_OPS, np.int64)
    for op in range(nb201.NUM_OPS):
        for stage in range(3):
            c, s = 16 * 2**stage, -(-size // 2**stage)
            per_op[op] += 5 * flops.nb201_op(op, c, s).macs
    return base + per_op[archs].sum(axis=1)
