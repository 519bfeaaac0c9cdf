"""Genotypes: hard-pruned METANAS / DARTS cells, and how to derive them.

Implements the hard pruning at the end of task learning of METANAS (Elsken et
al., CVPR 2020, Sec. 3.3): every operation whose mixing weight
``softmax(alpha / temperature)`` is at least a threshold is kept, and (strategy
``ops_and_inputs``) every k-subset of node inputs whose weight
``softmax(beta / temperature)`` is at least the threshold. The ``none``
strategy reproduces the DARTS discretisation (Liu et al., ICLR 2019, Sec. 2.4):
the top-2 inputs of each node by their strongest non-``none`` op, and the top
op on each kept edge.

A `Genotype` records the kept subsets, edges, ops *and their mixing weights*:
the pruned network is used without retraining, so it multiplies the kept ops by
the very weights the search network used (not renormalised; see `darts.py`).
It is JSON-serialisable (`to_json` / `from_json`).
"""

import dataclasses
import itertools
import json

import numpy as np

STRATEGIES = ("none", "ops", "ops_and_inputs")


def input_subsets(num_inputs, k):
    """The k-subsets of ``range(num_inputs)`` in a fixed (lexicographic) order.

    ``k >= num_inputs`` gives the single subset of all inputs (plain DARTS sum).
    """
    k = min(k, num_inputs)
    return list(itertools.combinations(range(num_inputs), k))


@dataclasses.dataclass(frozen=True)
class Edge:
    """A kept edge ``input -> node`` with its kept ``(op name, weight)`` pairs."""

    input: int
    ops: tuple


@dataclasses.dataclass(frozen=True)
class Node:
    """An intermediate node.

    Attributes:
      subsets: kept ``(inputs tuple, weight)`` pairs; the node is
        ``sum_s weight_s * sum_{i in inputs_s} edge_i``.
      edges: the kept edges (the union of the inputs of the kept subsets).
    """

    subsets: tuple
    edges: tuple

    def edge_coefficients(self):
        """``{input: sum of the weights of the kept subsets containing it}``."""
        coef = {}
        for inputs, weight in self.subsets:
            for i in inputs:
                coef[i] = coef.get(i, 0.0) + weight
        return coef


@dataclasses.dataclass(frozen=True)
class Cell:
    """A cell: intermediate nodes; the output concatenates all of them."""

    nodes: tuple

    def structure(self):
        """Hashable structure without weights (for counting common cells)."""
        return tuple(
            (
                tuple(tuple(s) for s, _ in node.subsets),
                tuple((e.input, tuple(op for op, _ in e.ops)) for e in node.edges),
            )
            for node in self.nodes
        )


@dataclasses.dataclass(frozen=True)
class Genotype:
    """A hard-pruned architecture: one normal and one reduction cell.

    Attributes:
      normal: the normal `Cell`.
      reduce: the reduction `Cell`.
      primitives: the search space (op names) it was derived from.
      strategy: ``none``, ``ops`` or ``ops_and_inputs``.
      temperature: the softmax temperature the weights were computed at.
      threshold: the hard-pruning threshold.
    """

    normal: Cell
    reduce: Cell
    primitives: tuple
    strategy: str
    temperature: float
    threshold: float

    def to_dict(self):
        def cell(c):
            return [
                {
                    "subsets": [[list(s), float(w)] for s, w in n.subsets],
                    "edges": [
                        {"input": e.input, "ops": [[o, float(w)] for o, w in e.ops]}
                        for e in n.edges
                    ],
                }
                for n in c.nodes
            ]

        return {
            "normal": cell(self.normal),
            "reduce": cell(self.reduce),
            "primitives": list(self.primitives),
            "strategy": self.strategy,
            "temperature": float(self.temperature),
            "threshold": float(self.threshold),
        }

    @classmethod
    def from_dict(cls, d):
        def cell(nodes):
            return Cell(
                tuple(
                    Node(
                        subsets=tuple((tuple(s), float(w)) for s, w in n["subsets"]),
                        edges=tuple(
                            Edge(int(e["input"]), tuple((o, float(w)) for o, w in e["ops"]))
                            for e in n["edges"]
                        ),
                    )
                    for n in nodes
                )
            )

        return cls(
            normal=cell(d["normal"]),
            reduce=cell(d["reduce"]),
            primitives=tuple(d["primitives"]),
            strategy=d["strategy"],
            temperature=float(d["temperature"]),
            threshold=float(d["threshold"]),
        )

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))


def _softmax(logits, temperature):
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def kept_mask(weights, threshold):
    """``w >= min(threshold, max(w))`` along the last axis.

    The argmax is always kept, so a node never loses all its inputs nor an
    edge all its ops, whatever the threshold. The forward pass (soft pruning)
    uses the same rule.
    """
    weights = np.asarray(weights)
    return weights >= np.minimum(threshold, weights.max(axis=-1, keepdims=True))


def edge_offsets(num_nodes):
    """Index of node j's first edge in the flat edge list, and the edge count."""
    offsets, start = [], 0
    for j in range(num_nodes):
        offsets.append(start)
        start += j + 2
    return offsets, start


def num_nodes_from_edges(num_edges):
    """Inverts ``num_edges = sum_{j < n} (j + 2)``."""
    n, total = 0, 0
    while total < num_edges:
        total += n + 2
        n += 1
    if total != num_edges:
        raise ValueError(f"{num_edges} edges do not form a DARTS cell.")
    return n


def _derive_cell(alpha, betas, temperature, threshold, strategy, primitives, k):
    alpha = np.asarray(alpha)
    num_nodes = num_nodes_from_edges(alpha.shape[0])
    offsets, _ = edge_offsets(num_nodes)
    op_tau = 1.0 if strategy == "none" else temperature
    op_w = _softmax(alpha, op_tau)
    nodes = []
    for j in range(num_nodes):
        n_in = j + 2
        w = op_w[offsets[j] : offsets[j] + n_in]
        if strategy == "ops_and_inputs":
            subsets = input_subsets(n_in, k)
            b = _softmax(np.asarray(betas[j]), temperature)
            if b.shape != (len(subsets),):
                raise ValueError(
                    f"beta of node {j} has shape {b.shape}, expected ({len(subsets)},) "
                    f"= C({n_in}, {k})."
                )
            keep = kept_mask(b, threshold)
            kept_subsets = tuple(
                (s, float(np.float32(bw))) for s, bw, kp in zip(subsets, b, keep) if kp
            )
        else:
            # DARTS: the two inputs whose strongest non-`none` op is largest.
            strength = np.array(
                [
                    max(w[i, o] for o, name in enumerate(primitives) if name != "none")
                    for i in range(n_in)
                ]
            )
            top = tuple(sorted(np.argsort(-strength, kind="stable")[:2].tolist()))
            kept_subsets = ((top, 1.0),)
        inputs = sorted({i for s, _ in kept_subsets for i in s})
        edges = []
        for i in inputs:
            if strategy == "none":
                # DARTS: the top non-`none` op of the edge.
                cand = [o for o, name in enumerate(primitives) if name != "none"]
                best = max(cand, key=lambda o, i=i: w[i, o])
                ops = ((primitives[best], float(np.float32(w[i, best]))),)
            else:
                keep = kept_mask(w[i], threshold)
                ops = tuple(
                    (primitives[o], float(np.float32(w[i, o])))
                    for o in range(len(primitives))
                    if keep[o] and primitives[o] != "none"
                )
                if not ops:  # Only `none` survived: the edge contributes nothing.
                    continue
            edges.append(Edge(int(i), ops))
        nodes.append(
            Node(
                subsets=tuple((tuple(int(i) for i in s), w_) for s, w_ in kept_subsets),
                edges=tuple(edges),
            )
        )
    return Cell(tuple(nodes))


def derive_genotype(
    alpha_normal,
    beta_normal,
    alpha_reduce,
    beta_reduce,
    temperature,
    threshold=0.01,
    strategy="ops_and_inputs",
    primitives=None,
    k=2,
):
    """Hard-prunes architecture logits into a `Genotype`.

    Args:
      alpha_normal: ``(num_edges, num_ops)`` op logits of the normal cell (edges
        ordered node by node, inputs ``0..j+1`` for node j).
      beta_normal: list (one per node) of subset logits of the normal cell,
        node j of length ``C(j + 2, k)``; ignored (may be None) unless
        ``strategy == "ops_and_inputs"``.
      alpha_reduce: op logits of the reduction cell.
      beta_reduce: subset logits of the reduction cell.
      temperature: softmax temperature (python float or scalar); ignored by
        ``strategy == "none"`` (vanilla DARTS has none).
      threshold: keep ops / subsets with weight ``>= threshold`` (the largest is
        always kept). Unused by ``none`` (top-1 op, top-2 inputs).
      strategy: ``none`` (DARTS: top-2 inputs by strongest non-none op, top op
        per kept edge), ``ops`` (DARTS input selection, thresholded ops) or
        ``ops_and_inputs`` (METANAS: thresholded subsets and ops).
      primitives: op names in alpha's column order (default: the few-shot set).
      k: subset size of the ``ops_and_inputs`` search space.

    Returns:
      A `Genotype`. ``none`` ops are never kept (they contribute zero).

    References: Elsken et al., METANAS, arXiv:1912.09744, Sec. 3.3;
      Liu et al., DARTS, arXiv:1806.09055, Sec. 2.4.
    """
    from tfmetanas.nas.ops import FEW_SHOT_PRIMITIVES

    if strategy not in STRATEGIES:
        from tfmetanas import errors

        raise errors.ConfigError(f"Unknown sparsify strategy {strategy!r}; valid: {STRATEGIES}.")
    primitives = tuple(primitives or FEW_SHOT_PRIMITIVES)
    temperature = float(np.asarray(temperature))

    def cell(alpha, beta):
        alpha = np.asarray(alpha)
        if alpha.shape[-1] != len(primitives):
            raise ValueError(
                f"alpha has {alpha.shape[-1]} columns but there are {len(primitives)} primitives."
            )
        if beta is not None:
            beta = [np.asarray(b) for b in beta]
        return _derive_cell(alpha, beta, temperature, threshold, strategy, primitives, k)

    return Genotype(
        normal=cell(alpha_normal, beta_normal),
        reduce=cell(alpha_reduce, beta_reduce),
        primitives=primitives,
        strategy=strategy,
        temperature=temperature,
        threshold=float(threshold),
    )
