"""The NAS-Bench-201 search space and its weight-sharing supernet.

NAS-Bench-201 (Dong & Yang, ICLR 2020, arXiv:2001.00326, Section 2.1; SUMNAS,
Ha et al., ICLR 2022, Section 5.1): a cell is a DAG of 4 nodes; each of the 6
edges ``j -> i`` (j < i) carries one of 5 operations; node i is the sum of its
incoming edges, node 0 is the cell input and node 3 its output.

Macro skeleton (the benchmark's, with width C and depth N configurable so it
trains on a CPU; the benchmark uses C=16, N=5, 32x32 inputs):

  stem: conv3x3(3 -> C) - BN
  stage 1: N cells with C channels
  reduction: ResNet basic block, stride 2, C -> 2C
  stage 2: N cells with 2C channels
  reduction: ResNet basic block, stride 2, 2C -> 4C
  stage 3: N cells with 4C channels
  BN - ReLU - global average pool - linear

Conv ops are ReLU-conv-BN; ``avg_pool_3x3`` is stride 1 with padding excluded
from the average (PyTorch ``count_include_pad=False``, the benchmark's). All
cells share one architecture (6 choices), as in the benchmark.

Encodings of a cell:
- string ``|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|...~0|...~1|...~2|``
  (the benchmark's);
- tuple of 6 op indices into `OPS` in edge order `EDGES`;
- canonical index: the tuple read as a base-5 number (edge (1,0) most
  significant), 0..15624.
The benchmark's own index order is a fixed shuffle of the cells (it is NOT
the canonical order, nor NB201's ``gen_all`` order); it is read from the
benchmark table by `tfmetanas.nas.oracle.NB201Oracle`.
"""

import re

import numpy as np
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.nas import supernet as sn

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from)
NUM_EDGES = len(EDGES)
NUM_OPS = len(OPS)
NUM_ARCHS = NUM_OPS**NUM_EDGES  # 15,625

_TOKEN = re.compile(r"^([a-z0-9_]+)~(\d+)$")


# --------------------------------------------------------------------------
# Encodings.
# --------------------------------------------------------------------------


def arch_to_string(arch):
    """Tuple of 6 op indices -> the benchmark's architecture string."""
    arch = _check_tuple(arch)
    nodes, e = [], 0
    for i in range(1, 4):
        tokens = []
        for j in range(i):
            tokens.append(f"{OPS[arch[e]]}~{j}")
            e += 1
        nodes.append("|" + "|".join(tokens) + "|")
    return "+".join(nodes)


def string_to_arch(string):
    """The benchmark's architecture string -> tuple of 6 op indices.

    Raises:
      errors.ConfigError: on a malformed string or unknown op.
    """
    nodes = str(string).strip().split("+")
    if len(nodes) != 3:
        raise errors.ConfigError(
            f"Bad NAS-Bench-201 architecture string {string!r}: expected 3 nodes joined by '+', "
            "e.g. '|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|"
            "nor_conv_3x3~1|skip_connect~2|'."
        )
    arch = []
    for i, node in enumerate(nodes, start=1):
        tokens = [t for t in node.split("|") if t]
        if len(tokens) != i:
            raise errors.ConfigError(f"Node {i} of {string!r} needs {i} inputs, has {tokens}.")
        for j, token in enumerate(tokens):
            m = _TOKEN.match(token)
            if not m or m.group(1) not in OPS or int(m.group(2)) != j:
                raise errors.ConfigError(
                    f"Bad edge {token!r} in {string!r}: expected '<op>~{j}' with op in {OPS}."
                )
            arch.append(OPS.index(m.group(1)))
    return tuple(arch)


def arch_to_index(arch):
    """Tuple -> canonical index (base-5, first edge most significant)."""
    index = 0
    for a in _check_tuple(arch):
        index = index * NUM_OPS + a
    return index


def index_to_arch(index):
    """Canonical index -> tuple of 6 op indices."""
    index = int(index)
    if not 0 <= index < NUM_ARCHS:
        raise errors.ConfigError(f"NAS-Bench-201 cell index {index} not in [0, {NUM_ARCHS}).")
    arch = []
    for _ in range(NUM_EDGES):
        arch.append(index % NUM_OPS)
        index //= NUM_OPS
    return tuple(reversed(arch))


def all_archs():
    """All 15,625 cells as an int32 array [15625, 6], in canonical order."""
    digits = np.arange(NUM_ARCHS)[:, None] // NUM_OPS ** np.arange(NUM_EDGES - 1, -1, -1)
    return (digits % NUM_OPS).astype(np.int32)


def to_arch(spec):
    """An arch given as tuple/list/array, string or canonical index -> tuple."""
    if isinstance(spec, str):
        return string_to_arch(spec)
    if isinstance(spec, (int, np.integer)):
        return index_to_arch(spec)
    return _check_tuple(spec)


def _check_tuple(arch):
    arch = tuple(int(a) for a in np.asarray(arch).reshape(-1))
    if len(arch) != NUM_EDGES or any(not 0 <= a < NUM_OPS for a in arch):
        raise errors.ConfigError(
            f"A NAS-Bench-201 cell is {NUM_EDGES} op indices in [0, {NUM_OPS}), got {arch}."
        )
    return arch


# --------------------------------------------------------------------------
# Supernet.
# --------------------------------------------------------------------------


def relu_conv_bn(c_in, c_out, kernel_size, stride, bn):
    return sn.Sequential([tf.nn.relu, sn.Conv(c_in, c_out, kernel_size, stride), sn.BatchNorm(c_out, **bn)])


def _avg_pool_3x3(x):
    # TF's SAME average pooling excludes padding, like count_include_pad=False.
    return tf.nn.avg_pool2d(x, 3, 1, "SAME")


def make_op(name, channels, bn):
    """One candidate operation on an edge (stride 1, channels kept)."""
    if name == "none":
        return sn.Lambda(tf.zeros_like)
    if name == "skip_connect":
        return sn.Lambda(tf.identity)
    if name == "nor_conv_1x1":
        return relu_conv_bn(channels, channels, 1, 1, bn)
    if name == "nor_conv_3x3":
        return relu_conv_bn(channels, channels, 3, 1, bn)
    if name == "avg_pool_3x3":
        return sn.Lambda(_avg_pool_3x3)
    raise errors.ConfigError(f"Unknown NAS-Bench-201 op {name!r}; valid: {OPS}.")


class ResidualReduction(sn.Module):
    """NB201's ResNetBasicblock with stride 2 (between stages)."""

    def __init__(self, c_in, c_out, bn, **kwargs):
        super().__init__(**kwargs)
        self.c_in, self.c_out = c_in, c_out
        self.conv_a = relu_conv_bn(c_in, c_out, 3, 2, bn)
        self.conv_b = relu_conv_bn(c_out, c_out, 3, 1, bn)
        self.shortcut = sn.Conv(c_in, c_out, 1, 1)
        self.built = True

    def forward(self, x, training=False):
        y, u1 = self.conv_a.forward(x, training)
        y, u2 = self.conv_b.forward(y, training)
        residual, _ = self.shortcut.forward(tf.nn.avg_pool2d(x, 2, 2, "VALID"), training)
        return residual + y, u1 + u2


class NB201Supernet(sn.Supernet):
    """NAS-Bench-201 supernet: ``call(x, training=False, arch=int32[6])``.

    Every cell position has its own candidate weights; all cells use the same
    6 edge choices (the benchmark's cell-based space).

    Args:
      num_classes: classifier outputs.
      channels: C, the first stage's width (benchmark: 16).
      cells_per_stage: N (benchmark: 5).
      in_channels: image channels.
      selection: "switch" or "stack" (see `supernet.Choice`; "gather" is refused: the
        candidates are different operations).
      bn_affine: BN gamma/beta in the candidates and skeleton.
      bn_momentum: BN running-statistics decay (Keras convention).

    References: Dong & Yang, arXiv:2001.00326, Section 2.1 and Figure 1.
    """

    num_layers = NUM_EDGES
    num_choices = NUM_OPS

    def __init__(self, num_classes, channels=16, cells_per_stage=5, in_channels=3,
                 selection="switch", bn_affine=True, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.channels = int(num_classes), int(channels)
        self.cells_per_stage, self.in_channels = int(cells_per_stage), int(in_channels)
        bn = {"affine": bn_affine, "momentum": bn_momentum}
        c = self.channels
        self.stem = sn.Sequential([sn.Conv(in_channels, c, 3, 1), sn.BatchNorm(c, **bn)])
        self.stages, self.reductions = [], []
        # One Choice per (cell, edge); self.choices[e] is a list over cells.
        self.cell_choices = []
        for stage in range(3):
            width = c * 2**stage
            if stage:
                self.reductions.append(ResidualReduction(width // 2, width, bn))
            for _ in range(self.cells_per_stage):
                self.cell_choices.append(
                    [sn.Choice([make_op(o, width, bn) for o in OPS], selection) for _ in EDGES]
                )
        self.final_bn = sn.BatchNorm(4 * c, **bn)
        self.classifier = sn.Dense(4 * c, self.num_classes)
        self.built = True

    @property
    def choices(self):
        """Per edge, a view listing that edge's Choice layers of all cells."""
        return [_EdgeView([cell[e] for cell in self.cell_choices]) for e in range(NUM_EDGES)]

    def _cell(self, x, cell, arch, training):
        nodes, updates, e = [x], [], 0
        for i in range(1, 4):
            total = None
            for j in range(i):
                y, u = cell[e].forward_choice(nodes[j], arch[e], training)
                updates += u
                total = y if total is None else total + y
                e += 1
            nodes.append(total)
        return nodes[-1], updates

    def forward(self, x, arch, training=False):
        x, updates = self.stem.forward(x, training)
        for index, cell in enumerate(self.cell_choices):
            if index and index % self.cells_per_stage == 0:
                x, u = self.reductions[index // self.cells_per_stage - 1].forward(x, training)
                updates += u
            x, u = self._cell(x, cell, arch, training)
            updates += u
        x, u = self.final_bn.forward(x, training)
        updates += u
        x = tf.reduce_mean(tf.nn.relu(x), axis=[1, 2])
        logits, _ = self.classifier.forward(x)
        return logits, updates


class _EdgeView:
    """The Choice layers of one edge across cells, seen as one choice layer."""

    def __init__(self, choices):
        self._choices = choices

    @property
    def candidates(self):
        return [_Group([ch.candidates[c] for ch in self._choices])
                for c in range(self._choices[0].num_choices)]


class _Group:
    def __init__(self, modules):
        self.modules = modules

    @property
    def variables(self):
        return [v for m in self.modules for v in m.variables]

    @property
    def trainable_variables(self):
        return [v for m in self.modules for v in m.trainable_variables]


def build_supernet(num_classes, channels=16, cells_per_stage=5, image_size=32, in_channels=3,
                   **kwargs):
    """Builds an `NB201Supernet` and runs it once so every variable exists."""
    model = NB201Supernet(num_classes, channels, cells_per_stage, in_channels, **kwargs)
    model(tf.zeros([1, image_size, image_size, in_channels]), arch=tf.zeros([NUM_EDGES], tf.int32))
    return model
