"""The METANAS search network (DARTS cells with soft pruning) and its pruned form.

Implements Elsken et al., "Meta-Learning of Neural Architectures for Few-Shot
Learning" (METANAS, CVPR 2020, arXiv:1912.09744), Sec. 3.3 and Sec. 4.1, on the
DARTS search space (Liu et al., ICLR 2019, arXiv:1806.09055, Sec. 2):

- `MixedOp`: ``sum_o w_o * o(x)`` with ``w = softmax(alpha / temperature)``
  (METANAS Eq. 5);
- `SearchCell`: node j mixes all k-subsets of its ``j + 2`` inputs with weights
  ``softmax(beta_j / temperature)`` (METANAS Eq. 7); each subset contributes the
  sum of its mixed edges;
- `SearchNetwork`: stem, cells (normal cells share one alpha/beta, reduction
  cells another, as in DARTS), global average pooling, linear head;
- soft pruning: ops and subsets whose weight is below ``prune_threshold`` are
  left out (scaled by zero, or skipped by `tf.cond`: ``soft_prune``);
- `DiscreteNetwork` / `discrete_from_search`: the hard-pruned network built
  from a `Genotype`, holding only the kept ops, with the search network's
  (adapted) weights copied in.

Sparsify strategies (``sparsify``):

- ``none``: vanilla DARTS. Temperature is ignored, node inputs are summed
  (no beta), nothing is soft-pruned; hard pruning keeps the top-2 inputs per
  node and the top op per kept edge.
- ``ops``: temperature and soft pruning on alpha only; inputs summed as DARTS;
  hard pruning keeps the DARTS top-2 inputs and the thresholded ops on them.
- ``ops_and_inputs`` (the paper's): temperature and soft pruning on alpha and
  beta; hard pruning keeps thresholded subsets and thresholded ops.

Pruned network weights: the discrete network multiplies each kept op by the
softmax weight the search network gave it, and each kept edge by the summed
weights of the kept subsets containing it; the weights are *not* renormalised
after dropping the pruned ones. Dropping a term ``w * o(x)`` then changes the
function by exactly that term, and by nothing when ``w`` is 0, whereas
renormalising would rescale every kept term. So the pruned network equals the
search network when the pruned weights are exactly zero, which is what the
paper's prune-without-retraining needs.

Cost of soft pruning with ``soft_prune="cond"``: every op runs under its own
`tf.cond` (flat, never nested). The forward pass and first-order gradients
(the paper's first-order DARTS task learner) trace in seconds, but building
*second-order* gradients through hundreds of conds takes minutes even for tiny
networks; use the default ``"mask"`` (no conds) for second-order task learning.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.models import recompute
from tfmetanas.models.params import add_param
from tfmetanas.nas import ops as ops_lib
from tfmetanas.nas.genotype import (
    STRATEGIES,
    Genotype,
    derive_genotype,
    edge_offsets,
    input_subsets,
)

SOFT_PRUNE_MODES = ("mask", "cond")


def mixing_weights(logits, temperature=1.0):
    """``softmax(logits / temperature)`` over the last axis (METANAS Eq. 5/7).

    Args:
      logits: alpha ``(..., num_ops)`` or beta ``(num_subsets,)``.
      temperature: python float or scalar tensor.

    Returns:
      A tensor of mixing weights summing to 1 over the last axis.

    References: Elsken et al., METANAS, arXiv:1912.09744, Eq. 5.
    """
    logits = tf.convert_to_tensor(logits)
    return tf.nn.softmax(logits / tf.cast(temperature, logits.dtype), axis=-1)


def arch_entropy(logits, temperature=1.0):
    """Mean entropy (nats) of the mixing distributions, for TensorBoard.

    Args:
      logits: an alpha tensor ``(num_edges, num_ops)`` (mean over edges) or a
        list of per-node beta tensors (mean over nodes).
      temperature: softmax temperature.

    Returns:
      A scalar tensor; ``log(num_ops)`` for uniform weights, 0 for one-hot.

    References: Elsken et al., METANAS, arXiv:1912.09744, Sec. 3.3.
    """
    if isinstance(logits, (list, tuple)):
        return tf.reduce_mean(tf.stack([arch_entropy(b, temperature) for b in logits]))
    w = mixing_weights(logits, temperature)
    ent = -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(w), w), axis=-1)
    return tf.reduce_mean(ent)


def _effective_threshold(weights, threshold):
    # The argmax always survives (same rule as `genotype.kept_mask`), so a node
    # keeps an input and an edge keeps an op whatever the threshold.
    return tf.minimum(tf.cast(threshold, weights.dtype), tf.reduce_max(weights))


class MixedOp(keras.layers.Layer):
    """A DARTS edge: ``sum_o w_o * o(x)`` over the candidate operations.

    Args:
      primitives: operation names (columns of alpha).
      channels: channels of the edge.
      stride: 1, or 2 for the input edges of a reduction cell.

    References: Liu et al., DARTS, arXiv:1806.09055, Eq. 2; METANAS Eq. 5.
    """

    def __init__(self, primitives, channels, stride, **kwargs):
        super().__init__(**kwargs)
        self.primitives = tuple(primitives)
        self.channels = channels
        self.stride = stride
        self.ops = [ops_lib.make_op(p, channels, stride) for p in self.primitives]

    def build(self, input_shape):
        del input_shape  # Sub-layers are built by the network's eager build pass.

    def call(self, x, scales, keep=None, training=False, soft_prune="mask", memo=None):
        """Mixes the ops, op ``o`` scaled by ``scales[o]``.

        Args:
          x: edge input.
          scales: per op a scalar tensor: the op's mixing weight times the
            edge's coefficient (`SearchCell` computes them for all edges at
            once); with ``"mask"`` already zero for the ops left out.
          keep: None (compute every op) or per op a boolean scalar: whether
            the op survives soft pruning.
          training: BN mode.
          soft_prune: how ops with ``keep`` False are left out: ``"mask"``
            computes them, scaled by 0 (no BN update either), ``"cond"``
            skips them with a `tf.cond` each (see `SearchNetwork`).
          memo: an `ops.Memo` of `x`, sharing work with the other edges
            reading it (not used with ``"cond"``, whose branches cannot share).

        Returns:
          ``sum_o scales[o] * o(x)`` over the kept ops.
        """
        out = None
        for o, (name, op) in enumerate(zip(self.primitives, self.ops)):
            if name == "none":
                continue  # Contributes exactly zero: never computed.

            def term(op=op, scale=scales[o], memo=memo):
                return op(x, training=training, memo=memo, scale=scale)

            if keep is None:
                y = term()
            elif soft_prune == "mask":
                state = op.non_trainable_variables if training else ()
                y = ops_lib.run_masked(keep[o], term, state)
            else:
                # One flat `tf.cond` per op (edge gate folded into the predicate):
                # nested conds make second-order gradients very slow to build.
                state = op.non_trainable_variables if training else ()
                y = ops_lib.run_if(
                    keep[o],
                    lambda term=term: term(memo=None),
                    lambda: ops_lib.output_zeros(x, self.channels, self.stride),
                    state,
                )
            out = y if out is None else out + y
        if out is None:
            out = ops_lib.output_zeros(x, self.channels, self.stride)
        return out


class SearchCell(keras.layers.Layer):
    """A METANAS search cell (DARTS cell with k-subset input mixing).

    Args:
      primitives: operation names.
      channels: channels of every node.
      num_nodes: intermediate nodes.
      k: subset size; ``k >= j + 2`` gives node j the plain DARTS sum.
      reduction: whether the cell halves the resolution.
      reduction_prev: whether the previous cell did (preprocess the k-2 input
        with `FactorizedReduce`).
      use_subsets: mix k-subsets with beta (``ops_and_inputs``); otherwise
        inputs are summed.

    References: Elsken et al., METANAS, arXiv:1912.09744, Eq. 7.
    """

    def __init__(
        self,
        primitives,
        channels,
        num_nodes,
        k,
        reduction,
        reduction_prev,
        use_subsets,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.primitives = tuple(primitives)
        self.channels = channels
        self.num_nodes = num_nodes
        self.k = k
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        self.use_subsets = use_subsets
        self.preproc0 = _preprocess(channels, reduction_prev, "preproc0")
        self.preproc1 = ops_lib.ReLUConvBN(channels, 1, 1, name="preproc1")
        self.edges = []  # Flat, node by node, inputs 0..j+1.
        for j in range(num_nodes):
            for i in range(j + 2):
                stride = 2 if reduction and i < 2 else 1
                self.edges.append(MixedOp(primitives, channels, stride, name=f"edge_{j}_{i}"))

    def build(self, input_shape):
        del input_shape  # Sub-layers are built by the network's eager build pass.

    def _op_scales(self, op_weights, subset_weights, threshold, edge_masks, soft_prune):
        """Per edge and op the scalar scale of the op's output, and whether it is kept.

        Computed for the whole cell at once and split with one `tf.unstack`
        (one graph node, not a slice, a comparison and a select per op).

        Returns:
          ``(scales, keep)``: lists of ``num_edges * num_ops`` scalar tensors,
          edge-major; ``keep`` is None when every op is computed. With
          ``"mask"``, the scales of the ops left out are 0.
        """
        coef = gate = None
        if self.use_subsets:
            coefs, gates = [], []
            for j, b in enumerate(subset_weights):
                n_in = j + 2
                subsets = input_subsets(n_in, self.k)
                membership = np.zeros((n_in, len(subsets)), np.float32)
                for s, subset in enumerate(subsets):
                    membership[list(subset), s] = 1.0
                if threshold is None:
                    kept = tf.ones_like(b)
                else:
                    kept = tf.cast(b >= _effective_threshold(b, threshold), b.dtype)
                # Node = sum_s b_s * sum_{i in s} edge_i = sum_i c_i * edge_i.
                coefs.append(tf.linalg.matvec(membership, b * kept))
                gates.append(tf.linalg.matvec(membership, kept) > 0)
            coef, gate = tf.concat(coefs, 0), tf.concat(gates, 0)
        elif edge_masks is not None:
            gate = tf.concat(list(edge_masks), 0)
            coef = tf.cast(gate, op_weights.dtype)
        scales = op_weights if coef is None else op_weights * coef[:, None]
        keep = None
        if threshold is not None:
            # The argmax of every edge always survives (`_effective_threshold`).
            edge_threshold = tf.minimum(
                tf.cast(threshold, op_weights.dtype),
                tf.reduce_max(op_weights, axis=1, keepdims=True),
            )
            keep = op_weights >= edge_threshold
            if gate is not None:
                keep = tf.logical_and(keep, gate[:, None])
            if soft_prune == "mask":
                scales = tf.where(keep, scales, tf.zeros_like(scales))
            keep = tf.unstack(tf.reshape(keep, [-1]))
        return tf.unstack(tf.reshape(scales, [-1])), keep

    def call(
        self,
        s0,
        s1,
        op_weights,
        subset_weights,
        threshold=None,
        training=False,
        edge_masks=None,
        soft_prune="mask",
    ):
        """Runs the cell.

        Args:
          s0, s1: outputs of the cells k-2 and k-1.
          op_weights: ``(num_edges, num_ops)`` mixing weights.
          subset_weights: list of per-node subset weights (ignored unless
            `use_subsets`).
          threshold: soft-pruning threshold, or None to compute everything.
          training: BN mode.
          edge_masks: hard pruning of the ``none``/``ops`` strategies: per
            node a boolean ``(j + 2,)`` mask of the kept inputs (each kept
            edge enters with coefficient 1, dropped ones are not computed).
          soft_prune: ``"mask"`` or ``"cond"`` (see `MixedOp`).

        Returns:
          The concatenation of the intermediate nodes.
        """
        states = [self.preproc0(s0, training=training), self.preproc1(s1, training=training)]
        # Work shared by the edges reading a state (ReLU, pooling, subsampling).
        share = soft_prune == "mask" or threshold is None  # tf.cond branches cannot share.
        memos = [ops_lib.Memo() if share else None for _ in range(self.num_nodes + 1)]
        scales, keep = self._op_scales(op_weights, subset_weights, threshold, edge_masks,
                                       soft_prune)
        num_ops = len(self.primitives)
        e = 0
        for j in range(self.num_nodes):
            node = None
            for i in range(j + 2):
                ops = slice((e + i) * num_ops, (e + i + 1) * num_ops)
                y = self.edges[e + i](
                    states[i],
                    scales[ops],
                    keep=None if keep is None else keep[ops],
                    training=training,
                    soft_prune=soft_prune,
                    memo=memos[i],
                )
                node = y if node is None else node + y
            states.append(node)
            e += j + 2
        return tf.concat(states[2:], axis=-1)


def _preprocess(channels, reduction_prev, name):
    if reduction_prev:
        return ops_lib.FactorizedReduce(channels, 2, name=name)
    return ops_lib.ReLUConvBN(channels, 1, 1, name=name)


def _check_architecture(num_classes, channels, num_cells, reduction_cells, num_nodes, k):
    if num_classes < 1 or channels < 1 or num_cells < 1 or num_nodes < 1 or k < 1:
        raise errors.ConfigError(
            f"SearchNetwork needs positive num_classes/channels/num_cells/num_nodes/k, got "
            f"{num_classes}/{channels}/{num_cells}/{num_nodes}/{k}."
        )
    bad = [r for r in reduction_cells if not 0 <= r < num_cells]
    if bad:
        raise errors.ConfigError(
            f"reduction_cells {list(reduction_cells)} has indices outside [0, {num_cells})."
        )
    if channels % 2:
        raise errors.ConfigError(
            f"channels must be even (FactorizedReduce splits them in halves), got {channels}."
        )


class _CellNetwork(keras.Model):
    """Shared stem / cell layout / head of the search and discrete networks."""

    def __init__(
        self,
        num_classes,
        channels,
        num_cells,
        reduction_cells,
        stem_multiplier,
        reduction_channel_multiplier,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.num_cells = num_cells
        self.reduction_cells = tuple(sorted(reduction_cells))
        self.stem_multiplier = stem_multiplier
        self.reduction_channel_multiplier = reduction_channel_multiplier
        self.stem_conv = ops_lib.Conv(stem_multiplier * channels, 3, name="stem_conv")
        self.stem_bn = ops_lib.BatchNorm(affine=True, name="stem_bn")
        self.head = ops_lib.Dense(num_classes, name="head")

    def _cell_layout(self):
        """``[(channels, reduction, reduction_prev)]`` per cell."""
        layout, c, reduction_prev = [], self.channels, False
        for i in range(self.num_cells):
            reduction = i in self.reduction_cells
            if reduction:
                c *= self.reduction_channel_multiplier
            layout.append((c, reduction, reduction_prev))
            reduction_prev = reduction
        return layout

    def _stem(self, x, training):
        return self.stem_bn(self.stem_conv(x), training=training)

    def _head(self, s):
        return self.head(tf.reduce_mean(s, axis=[1, 2]))

    def _build_by_tracing(self, input_shape):
        # Build every sub-layer with one eager forward pass on a dummy batch, so
        # that no variable is ever created inside `tf.cond` / `tf.function`
        # and soft pruning never leaves an op unbuilt.
        self.input_shape_for_build = tuple(input_shape)
        _, h, w, c = input_shape
        dummy = tf.zeros((1, h or 8, w or 8, c), tf.float32)
        with tf.init_scope():
            self._forward(dummy, training=False, temperature=1.0, build_pass=True)

    def architecture_kwargs(self):
        """Constructor arguments shared by `SearchNetwork` and `DiscreteNetwork`."""
        return dict(
            num_classes=self.num_classes,
            channels=self.channels,
            num_cells=self.num_cells,
            reduction_cells=self.reduction_cells,
            stem_multiplier=self.stem_multiplier,
            reduction_channel_multiplier=self.reduction_channel_multiplier,
        )


class SearchNetwork(_CellNetwork):
    """The METANAS / DARTS search network (one-shot model).

    Args:
      num_classes: outputs of the linear head (N of N-way).
      channels: channels C of each cell node (the paper: 28 on Omniglot).
      num_cells: number of cells (the paper: 4).
      reduction_cells: indices of reduction cells (the paper: (1, 3)).
      num_nodes: intermediate nodes per cell (default 3).
      k: input subset size of ``ops_and_inputs`` (default 2).
      primitives: operation names (default: the few-shot set of `ops`).
      sparsify: ``none``, ``ops`` or ``ops_and_inputs`` (see module docstring).
      prune_threshold: soft-pruning threshold on mixing weights; ops and
        subsets with weight below it are not computed (the largest is always
        computed). 0 disables soft pruning. Default 0.01 as the paper's
        scripts (``--alpha_prune_threshold 0.01``). Unused by ``none``.
      stem_multiplier: stem channels = ``stem_multiplier * channels`` (DARTS 3).
      reduction_channel_multiplier: channel growth at reduction cells. 1 keeps C
        constant; DARTS and the METANAS reference code use 2.
      hard_threshold: the hard-pruning threshold at the end of task learning
        (the paper: 0.01); ops and subsets below it are removed.
      soft_prune: how soft pruning leaves ops out. ``"mask"`` (default)
        computes every op and scales the pruned ones by zero, leaving their BN
        statistics untouched: the same function and gradients as skipping
        them, one flat graph in which the edges reading a state share its
        ReLU, pooling and subsampling. ``"cond"`` skips each pruned op with its
        own `tf.cond` (the reference code's behaviour): saves the pruned ops'
        compute, at twice the trace time and graph memory, and a host
        round trip per op on accelerators. docs/performance.md has both.
      running_stats: whether training calls update the BN layers' moving
        statistics. False for runs that normalise with batch statistics
        everywhere (METANAS's transductive BN; export recalibrates from the
        support set), where nothing reads them: the same outputs and
        gradients, and a smaller graph (no moving-average update and its
        pruning mask per BN layer and step).
      recompute_cells: the first this many cells keep only their inputs
        and outputs for the backward pass and run their forward pass again
        there (`models.recompute`): the same gradients, less memory for the
        step's tensors (the first cells, at full resolution, hold most of
        them), one more forward pass of those cells. Needs
        ``running_stats=False`` and ``soft_prune="mask"``.
      max_pool_gradient: "native" or "argmax" (`ops.max_pool_argmax`): how
        the max-pooling ops differentiate. Second-order gradients through
        TensorFlow's native one are wrong in compiled graphs for stride-1
        pooling (a TensorFlow bug); "argmax" is exact, and needed by
        second-order meta-learners (a config check refuses "native" there).

    Call: ``model(x, training=False, temperature=1.0, hard_prune=False)`` ->
    logits, with `x` NHWC float images; `temperature` a python float or scalar
    tensor. ``hard_prune=True`` computes the hard-pruned network of the current
    architecture in-graph: exactly what `discrete_from_search` builds at that
    temperature and `hard_threshold` (the kept ops with their unrenormalised
    weights), so meta-test scores the pruned network without building it;
    a boolean scalar tensor picks between the two at run time, so one graph
    holds the forward pass for both (the meta-test scores both in one loop).

    References: Elsken et al., METANAS, arXiv:1912.09744, Sec. 3.3 and 4.1;
      Liu et al., DARTS, arXiv:1806.09055.
    """

    def __init__(
        self,
        num_classes,
        channels=16,
        num_cells=4,
        reduction_cells=(1, 3),
        num_nodes=3,
        k=2,
        primitives=ops_lib.FEW_SHOT_PRIMITIVES,
        sparsify="ops_and_inputs",
        prune_threshold=0.01,
        stem_multiplier=3,
        reduction_channel_multiplier=1,
        hard_threshold=0.01,
        soft_prune="mask",
        running_stats=True,
        recompute_cells=0,
        max_pool_gradient="native",
        name="search_network",
        **kwargs,
    ):
        _check_architecture(num_classes, channels, num_cells, reduction_cells, num_nodes, k)
        if sparsify not in STRATEGIES:
            raise errors.ConfigError(
                f"Unknown sparsify strategy {sparsify!r}; valid: {', '.join(STRATEGIES)}."
            )
        for p in primitives:
            ops_lib.OPERATIONS.get(p)  # Fails early listing the valid names.
        if soft_prune not in SOFT_PRUNE_MODES:
            raise errors.ConfigError(
                f"Unknown soft_prune {soft_prune!r}; valid: {', '.join(SOFT_PRUNE_MODES)}."
            )
        if not 0 <= int(recompute_cells) <= num_cells:
            raise errors.ConfigError(
                f"recompute_cells must be between 0 and num_cells = {num_cells}, got "
                f"{recompute_cells}."
            )
        if max_pool_gradient not in ops_lib.MAX_POOL_GRADIENTS:
            raise errors.ConfigError(
                f"Unknown max_pool_gradient {max_pool_gradient!r}; valid: "
                f"{', '.join(ops_lib.MAX_POOL_GRADIENTS)}."
            )
        if int(recompute_cells) and (running_stats or soft_prune != "mask"):
            raise errors.ConfigError(
                "Recomputing cells (recompute_cells > 0) needs running_stats=False (a BN "
                "update inside a recomputed cell would be lost) and soft_prune='mask'; "
                "set model.darts.recompute_cells=0 to use the others."
            )
        super().__init__(
            num_classes,
            channels,
            num_cells,
            reduction_cells,
            stem_multiplier,
            reduction_channel_multiplier,
            name=name,
            **kwargs,
        )
        self.num_nodes = num_nodes
        self.k = k
        self.primitives = tuple(primitives)
        self.sparsify = sparsify
        self.prune_threshold = float(prune_threshold)
        self.hard_threshold = float(hard_threshold)
        self.soft_prune = soft_prune
        use_subsets = sparsify == "ops_and_inputs"
        self.cells = [
            SearchCell(
                self.primitives,
                c,
                num_nodes,
                k,
                reduction,
                reduction_prev,
                use_subsets,
                name=f"cell_{i}",
            )
            for i, (c, reduction, reduction_prev) in enumerate(self._cell_layout())
        ]
        self.num_edges = sum(j + 2 for j in range(num_nodes))
        self.running_stats = bool(running_stats)
        self.recompute_cells = int(recompute_cells)
        # Without running statistics training calls neither read nor write the
        # BN state (`params.FunctionalModel.training_state`).
        self.training_uses_state = self.running_stats
        self.max_pool_gradient = max_pool_gradient
        for layer in self._flatten_layers(include_self=False):
            if isinstance(layer, ops_lib.BatchNorm):
                layer.track_running_stats = self.running_stats
            if isinstance(layer, ops_lib.Pool):
                layer.max_pool_gradient = max_pool_gradient

    def build(self, input_shape):
        init = keras.initializers.RandomNormal(stddev=1e-3)  # DARTS: 1e-3 * N(0, 1).
        shape = (self.num_edges, len(self.primitives))
        self.alpha_normal = add_param(self, "alpha_normal", shape, init, group="arch")
        self.alpha_reduce = add_param(self, "alpha_reduce", shape, init, group="arch")
        self.beta_normal, self.beta_reduce = [], []
        if self.sparsify == "ops_and_inputs":
            for j in range(self.num_nodes):
                n = len(input_subsets(j + 2, self.k))
                self.beta_normal.append(add_param(self, f"beta_normal_{j}", (n,), init, "arch"))
                self.beta_reduce.append(add_param(self, f"beta_reduce_{j}", (n,), init, "arch"))
        self._build_by_tracing(input_shape)

    # -- architecture values -------------------------------------------------

    def arch_variables(self):
        """``{"alpha_normal": var, "alpha_reduce": var, "beta_normal": [...], ...}``."""
        return {
            "alpha_normal": self.alpha_normal,
            "alpha_reduce": self.alpha_reduce,
            "beta_normal": list(self.beta_normal),
            "beta_reduce": list(self.beta_reduce),
        }

    def arch_values(self, params=None):
        """Architecture logits, taken from `params` (``{path: tensor}``) if present.

        Args:
          params: e.g. the adapted ``fast_weights`` of a task; variables not in
            it are read from the model.

        Returns:
          Same keys as `arch_variables`, with tensors.
        """
        params = params or {}

        def value(v):
            return params.get(v.path, v.value)

        return {
            "alpha_normal": value(self.alpha_normal),
            "alpha_reduce": value(self.alpha_reduce),
            "beta_normal": [value(b) for b in self.beta_normal],
            "beta_reduce": [value(b) for b in self.beta_reduce],
        }

    def genotype(self, params=None, temperature=1.0, threshold=0.01):
        """Hard-prunes the (adapted) architecture; see `derive_genotype`."""
        a = self.arch_values(params)
        use_beta = self.sparsify == "ops_and_inputs"
        return derive_genotype(
            np.asarray(a["alpha_normal"]),
            [np.asarray(b) for b in a["beta_normal"]] if use_beta else None,
            np.asarray(a["alpha_reduce"]),
            [np.asarray(b) for b in a["beta_reduce"]] if use_beta else None,
            temperature=temperature,
            threshold=threshold,
            strategy=self.sparsify,
            primitives=self.primitives,
            k=self.k,
        )

    # -- forward ---------------------------------------------------------------

    def call(self, x, training=False, temperature=1.0, hard_prune=False):
        return self._forward(x, training=training, temperature=temperature, hard_prune=hard_prune)

    def _top2_input_masks(self, weights):
        """DARTS input selection: per node the two inputs whose strongest
        non-``none`` op weighs most (ties to the lower index, as `derive_genotype`)."""
        real = [o for o, name in enumerate(self.primitives) if name != "none"]
        masks, e = [], 0
        for j in range(self.num_nodes):
            n_in = j + 2
            strength = tf.reduce_max(tf.gather(weights[e : e + n_in], real, axis=1), axis=1)
            top = tf.math.top_k(strength, min(2, n_in)).indices
            masks.append(tf.reduce_sum(tf.one_hot(top, n_in), axis=0) > 0)
            e += n_in
        return masks

    def _top1_ops(self, weights):
        """Vanilla DARTS: keep only the top non-``none`` op of every edge."""
        real = np.array([name != "none" for name in self.primitives])
        masked = tf.where(real[None], weights, -tf.ones_like(weights))
        best = tf.one_hot(tf.argmax(masked, axis=1), len(self.primitives), dtype=weights.dtype)
        return weights * best

    def _hard_prune_at_run_time(self, hard_prune, weights, threshold):
        """Mixing weights, threshold and input masks for a boolean tensor `hard_prune`.

        The values of both settings, picked at run time, so that one graph
        computes the search network and its hard-pruned network (soft pruning
        at threshold 0 keeps every op: mixing weights are never negative).
        """
        hard_prune = tf.cast(hard_prune, tf.bool)
        soft = tf.constant(0.0 if threshold is None else float(threshold))
        edge_masks = {"normal": None, "reduce": None}
        hard = self.hard_threshold
        if self.sparsify != "ops_and_inputs":
            free = tf.logical_not(hard_prune)
            edge_masks = {k: [tf.logical_or(m, free) for m in self._top2_input_masks(w)]
                          for k, w in weights.items()}
            if self.sparsify == "none":
                weights = {k: tf.where(hard_prune, self._top1_ops(w), w)
                           for k, w in weights.items()}
                hard = np.finfo(np.float32).tiny
        return weights, tf.where(hard_prune, tf.constant(float(hard)), soft), edge_masks

    def _forward(self, x, training, temperature, build_pass=False, hard_prune=False):
        if self.sparsify == "none":
            op_tau, threshold = 1.0, None  # Vanilla DARTS: no temperature, no pruning.
        else:
            op_tau = temperature
            threshold = self.prune_threshold if self.prune_threshold > 0 else None
        if build_pass:
            threshold, hard_prune = None, False
        weights = {
            kind: mixing_weights(getattr(self, f"alpha_{kind}").value, op_tau)
            for kind in ("normal", "reduce")
        }
        subset_weights = {
            kind: [mixing_weights(b.value, temperature) for b in getattr(self, f"beta_{kind}")]
            for kind in ("normal", "reduce")
        }
        edge_masks = {"normal": None, "reduce": None}
        if tf.is_tensor(hard_prune):
            weights, threshold, edge_masks = self._hard_prune_at_run_time(
                hard_prune, weights, threshold)
        elif hard_prune:
            if self.sparsify == "ops_and_inputs":
                # Soft pruning at the hard threshold *is* the pruned network.
                threshold = self.hard_threshold
            else:
                edge_masks = {k: self._top2_input_masks(w) for k, w in weights.items()}
                if self.sparsify == "none":
                    weights = {k: self._top1_ops(w) for k, w in weights.items()}
                    # Dropped ops have weight exactly 0: skip them, keep the rest.
                    threshold = np.finfo(np.float32).tiny
                else:
                    threshold = self.hard_threshold
        s0 = s1 = self._stem(x, training)
        for c, cell in enumerate(self.cells):
            kind = "reduce" if cell.reduction else "normal"

            def run(s0, s1, w, sw, threshold, masks, cell=cell):
                return cell(s0, s1, w, sw, threshold=threshold, training=training,
                            edge_masks=masks, soft_prune=self.soft_prune)

            cell_args = (s0, s1, weights[kind], subset_weights[kind], threshold, edge_masks[kind])
            if c < self.recompute_cells and not build_pass:
                out = recompute.recomputed_call(cell, run, *cell_args)
            else:
                out = run(*cell_args)
            s0, s1 = s1, out
        return self._head(s1)

    def pruned_param_count(self, genotype):
        """Trainable parameters of the `DiscreteNetwork` of `genotype`, without building it.

        Everything outside the mixed edges (stem, cell preprocessing, head) is
        kept whole; each kept op contributes the parameters of that op in the
        search network.
        """
        total = sum(
            math.prod(v.shape)
            for layer in (self.stem_conv, self.stem_bn, self.head)
            for v in layer.trainable_variables
        )
        offsets, _ = edge_offsets(self.num_nodes)
        for cell in self.cells:
            total += sum(
                math.prod(v.shape)
                for layer in (cell.preproc0, cell.preproc1)
                for v in layer.trainable_variables
            )
            g = genotype.reduce if cell.reduction else genotype.normal
            for j, node in enumerate(g.nodes):
                for edge in node.edges:
                    mixed = cell.edges[offsets[j] + edge.input]
                    for name, _ in edge.ops:
                        op = mixed.ops[mixed.primitives.index(name)]
                        total += sum(math.prod(v.shape) for v in op.trainable_variables)
        return int(total)


# ---------------------------------------------------------------------------
# The hard-pruned network.


class DiscreteEdge(keras.layers.Layer):
    """A kept edge: ``sum_o w_o * o(x)`` over its kept ops with fixed weights."""

    def __init__(self, op_weights, channels, stride, **kwargs):
        super().__init__(**kwargs)
        self.op_names = tuple(name for name, _ in op_weights)
        self.op_weights = tuple(float(w) for _, w in op_weights)
        self.ops = [ops_lib.make_op(name, channels, stride) for name in self.op_names]

    def build(self, input_shape):
        del input_shape  # Sub-layers are built by the network's eager build pass.

    def call(self, x, training=False, coef=None):
        out = None
        for w, op in zip(self.op_weights, self.ops):
            # Same rounding as `MixedOp`: the scale (edge coefficient * op weight)
            # goes into the op (folded into its final batch norm).
            scale = tf.constant(w, x.dtype) if coef is None else tf.constant(coef, x.dtype) * w
            y = op(x, training=training, scale=scale)
            out = y if out is None else out + y
        return out


class DiscreteCell(keras.layers.Layer):
    """A cell of a `Genotype`: only the kept edges and ops.

    Args:
      cell: a `genotype.Cell`.
      channels, reduction, reduction_prev: as `SearchCell`.
    """

    def __init__(self, cell, channels, reduction, reduction_prev, **kwargs):
        super().__init__(**kwargs)
        self.cell = cell
        self.channels = channels
        self.reduction = reduction
        self.preproc0 = _preprocess(channels, reduction_prev, "preproc0")
        self.preproc1 = ops_lib.ReLUConvBN(channels, 1, 1, name="preproc1")
        self.edges = []
        self.edge_index = []  # (node, input, coefficient) per entry of self.edges.
        for j, node in enumerate(cell.nodes):
            coef = node.edge_coefficients()
            for edge in node.edges:
                stride = 2 if reduction and edge.input < 2 else 1
                self.edges.append(
                    DiscreteEdge(edge.ops, channels, stride, name=f"edge_{j}_{edge.input}")
                )
                self.edge_index.append((j, edge.input, coef.get(edge.input, 0.0)))

    def build(self, input_shape):
        del input_shape  # Sub-layers are built by the network's eager build pass.

    def call(self, s0, s1, training=False):
        states = [self.preproc0(s0, training=training), self.preproc1(s1, training=training)]
        for j in range(len(self.cell.nodes)):
            node = None
            for edge, (jj, i, c) in zip(self.edges, self.edge_index):
                if jj != j:
                    continue
                y = edge(states[i], training=training, coef=c)
                node = y if node is None else node + y
            if node is None:  # Every kept op of the node was `none`.
                node = ops_lib.output_zeros(states[1], self.channels, 2 if self.reduction else 1)
            states.append(node)
        return tf.concat(states[2:], axis=-1)


class DiscreteNetwork(_CellNetwork):
    """The hard-pruned network of a `Genotype` (no architecture parameters).

    Args:
      genotype: a `Genotype` (from `derive_genotype`).
      num_classes, channels, num_cells, reduction_cells, stem_multiplier,
      reduction_channel_multiplier: as the `SearchNetwork` it was derived from
        (see `SearchNetwork.architecture_kwargs`).

    Call: ``model(x, training=False)`` -> logits.

    References: Elsken et al., METANAS, arXiv:1912.09744, Sec. 3.3 (hard
      pruning without retraining).
    """

    def __init__(
        self,
        genotype,
        num_classes,
        channels=16,
        num_cells=4,
        reduction_cells=(1, 3),
        stem_multiplier=3,
        reduction_channel_multiplier=1,
        name="discrete_network",
        **kwargs,
    ):
        num_nodes = len(genotype.normal.nodes)
        _check_architecture(num_classes, channels, num_cells, reduction_cells, num_nodes, 1)
        super().__init__(
            num_classes,
            channels,
            num_cells,
            reduction_cells,
            stem_multiplier,
            reduction_channel_multiplier,
            name=name,
            **kwargs,
        )
        self.genotype = genotype
        self.cells = [
            DiscreteCell(
                genotype.reduce if reduction else genotype.normal,
                c,
                reduction,
                reduction_prev,
                name=f"cell_{i}",
            )
            for i, (c, reduction, reduction_prev) in enumerate(self._cell_layout())
        ]

    def build(self, input_shape):
        self._build_by_tracing(input_shape)

    def call(self, x, training=False):
        return self._forward(x, training=training)

    def _forward(self, x, training, temperature=None, build_pass=False):
        del temperature, build_pass
        s0 = s1 = self._stem(x, training)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, training=training)
        return self._head(s1)


def _copy_layer(src, dst, params, state):
    pairs = [(src.trainable_variables, dst.trainable_variables, params)]
    pairs.append((src.non_trainable_variables, dst.non_trainable_variables, state))
    for src_vars, dst_vars, values in pairs:
        if len(src_vars) != len(dst_vars):
            raise ValueError(f"Cannot copy {src.path} into {dst.path}: variables differ.")
        for s, d in zip(src_vars, dst_vars):
            value = values.get(s.path, s.value) if values is not None else s.value
            if tuple(d.shape) != tuple(value.shape):
                raise ValueError(f"Shape mismatch copying {s.path} into {d.path}.")
            d.assign(value)


def discrete_from_search(
    search_model,
    params=None,
    state=None,
    genotype=None,
    temperature=1.0,
    threshold=0.01,
    input_shape=None,
):
    """Hard-prunes a (task-adapted) search network into a `DiscreteNetwork`.

    Args:
      search_model: a built `SearchNetwork`.
      params: ``{path: tensor}`` adapted values (as `FunctionalModel.params()`),
        weights and arch; missing ones are read from the model's variables.
      state: ``{path: tensor}`` BN statistics (as `FunctionalModel.state()` or
        the new state of an inner loop); missing ones are read from the model.
      genotype: the `Genotype` to build; derived from the arch values in
        `params` at (`temperature`, `threshold`) when None.
      temperature: softmax temperature for deriving the genotype.
      threshold: hard-pruning threshold for deriving the genotype.
      input_shape: ``(None, H, W, C)`` to build for; defaults to the search
        model's input shape.

    Returns:
      ``(discrete_model, genotype)``: the built model holding copies of the kept
      ops' weights and BN statistics, and the genotype it implements.

    References: Elsken et al., METANAS, arXiv:1912.09744, Sec. 3.3.
    """
    if genotype is None:
        genotype = search_model.genotype(params, temperature=temperature, threshold=threshold)
    if tuple(genotype.primitives) != tuple(search_model.primitives):
        raise ValueError(
            f"Genotype primitives {genotype.primitives} differ from the search "
            f"model's {search_model.primitives}."
        )
    discrete = DiscreteNetwork(genotype, **search_model.architecture_kwargs())
    if input_shape is None:
        input_shape = search_model.input_shape_for_build
    discrete.build(tuple(input_shape))
    discrete.built = True
    params = params or {}
    state = state or {}
    pairs = [
        (search_model.stem_conv, discrete.stem_conv),
        (search_model.stem_bn, discrete.stem_bn),
        (search_model.head, discrete.head),
    ]
    offsets, _ = edge_offsets(search_model.num_nodes)
    for s_cell, d_cell in zip(search_model.cells, discrete.cells):
        pairs += [(s_cell.preproc0, d_cell.preproc0), (s_cell.preproc1, d_cell.preproc1)]
        for d_edge, (j, i, _) in zip(d_cell.edges, d_cell.edge_index):
            mixed = s_cell.edges[offsets[j] + i]
            for name, d_op in zip(d_edge.op_names, d_edge.ops):
                pairs.append((mixed.ops[mixed.primitives.index(name)], d_op))
    for src, dst in pairs:
        _copy_layer(src, dst, params, state)
    return discrete, genotype


def count_params(model):
    """Number of trainable parameters of a model (the pruned size reported).

    Args:
      model: a built Keras model, e.g. a `DiscreteNetwork`.

    Returns:
      An int.

    References: Elsken et al., METANAS, arXiv:1912.09744, Sec. 5 (Fig. 5).
    """
    return int(sum(math.prod(v.shape) for v in model.trainable_variables))


__all__ = [
    "DiscreteNetwork",
    "Genotype",
    "MixedOp",
    "SearchCell",
    "SearchNetwork",
    "arch_entropy",
    "count_params",
    "derive_genotype",
    "discrete_from_search",
    "mixing_weights",
]
