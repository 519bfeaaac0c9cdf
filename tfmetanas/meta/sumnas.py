"""Supernet training steps: SPOS, FairNAS and SUMNAS.

One training step of each strategy on an ordinary supervised batch:

- **SPOS** (Guo et al., arXiv:1904.00420, Section 3.2): one uniformly sampled
  path; one SGD update of the weights that path uses.
- **FairNAS** (Chu et al., arXiv:1907.01845, Section 3.2, Algorithm 1):
  strict fairness; every layer draws a random permutation of its m
  candidates, giving m sub-models that together train every candidate of every
  layer exactly once; their gradients are averaged (or summed) into ONE update.
- **SUMNAS** (Ha et al., ICLR 2022, Section 3, Algorithm 1 and Appendix A):
  the same fair sampling, resampled every step (a public re-implementation
  resamples once per epoch); each sub-model adapts the shared weights with k
  inner SGD steps on the batch (lr 0.05, momentum 0.9), and the Reptile
  differences are averaged into one outer update,
  ``theta <- theta - beta_t * (theta - mean_i theta_i^(k) + wd * theta)``,
  outer SGD lr 1.0 with a cosine schedule and weight decay 4e-5.

With k = 1 SUMNAS *is* FairNAS: a single inner step from a fresh momentum
buffer gives ``theta - theta_i = alpha * g_i``, so the outer pseudo-gradient is
``alpha * mean_i g_i``; SUMNAS(alpha, beta, wd, momentum) equals
FairNAS(mean, lr = alpha * beta, wd = wd / alpha, same momentum) exactly
(tested in `tests/nas/sumnas_test.py`).

Weights are values: the inner loops run on tensors through `FunctionalModel`
(`stateless_call`) and `rules.SGD`; only the outer update assigns variables.
BN statistics are threaded through the sub-models in order, as in-place
running statistics would be. Each step is one `tf.function` whose sub-model loop and inner loop are
`tf.while_loop`s, so graph size and tracing time do not grow with m or k
(tracing the unrolled SUMNAS step took minutes on a shared CPU); the loops
carry the weights, pseudo-gradients, momentum and BN statistics packed into
one vector each, and the outer update is one SGD update of the packed
weights (the same numbers as per tensor, with far fewer nodes); the sampled
architectures are tensors derived from (seed, step) with stateless random
ops, so it traces once and a resumed run sees the same paths.

Under `tf.distribute` (``train.distribute`` of ``tfmetanas.search``) the
*sub-models* of a FairNAS/SUMNAS step are split across replicas, not the
data: replica r of R trains sub-models r, r + R, ... on the whole batch, and
the directions are summed over replicas (all-reduce) and divided by m. That
is exactly the single-device update of the weights: each sub-model's inner
loop and gradient is the same computation on the same batch, whereas
splitting the batch would change it (BN normalises with per-replica batch
statistics, and SUMNAS' k > 1 inner steps are not linear in the data). The
sampled paths are a pure function of (seed, step), identical on every replica
without communication. Only BN running statistics differ: each replica
threads them through its own sub-models and the replicas' results are
averaged (the ranking stage recalibrates them per sub-model anyway). SPOS
trains one path per step, which leaves nothing to split but the data, so it
is refused on several replicas.
"""

import gc
import math

import keras
import numpy as np
import tensorflow as tf

from tfmetanas import compiled, errors, memory
from tfmetanas.meta import replicas, rules
from tfmetanas.models import params as params_lib
from tfmetanas.nas import supernet as sn

STRATEGIES = ("spos", "fairnas", "sumnas")


def _segment_ids(sizes):
    """int32 [sum(sizes)]: for each element of a packed vector, its tensor's index.

    Computed at run time from the tensors' start offsets (a scatter and a
    cumulative sum), so neither a constant nor an intermediate grows beyond the
    vector itself (`tf.repeat` with a list of counts tiles its input to the
    largest count first: tensors x largest tensor elements).
    """
    total = int(np.sum(sizes))
    starts = np.cumsum(sizes)[:-1]
    starts = starts[starts < total]  # Empty tensors at the end start nowhere.
    if not len(starts):
        return tf.zeros([total], tf.int32)
    boundaries = tf.scatter_nd(starts[:, None].astype(np.int32),
                               tf.ones([len(starts)], tf.int32), [total])
    return tf.cumsum(boundaries)


def _packing_of(values):
    """``(pack, unpack)`` of `values`' `params_lib.Packing`, or identities where
    it cannot be packed (the BN state of a supernet without statistics, say)."""
    layout = params_lib.Packing.if_supported(values)
    if layout is None:
        return (lambda v: v), (lambda v: v)
    return layout.pack, layout.unpack


def cosine_schedule(base_lr, total_steps, final_fraction=0.0):
    """``step -> lr``: cosine decay from `base_lr` to `final_fraction * base_lr`."""
    total = max(int(total_steps), 1)

    def lr(step):
        t = tf.minimum(tf.cast(step, tf.float32), float(total)) / float(total)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * t))
        return base_lr * (final_fraction + (1.0 - final_fraction) * cosine)

    return lr


class SupernetTrainer:
    """Trains a `Supernet` with SPOS, FairNAS or SUMNAS.

    Args:
      model: a built `tfmetanas.nas.supernet.Supernet`.
      strategy: "spos", "fairnas" or "sumnas".
      learning_rate: outer (SPOS/FairNAS: the only) learning rate; SUMNAS: 1.0.
      total_steps: length of the cosine schedule.
      momentum: outer SGD momentum.
      weight_decay: outer L2 weight decay (added to the (pseudo-)gradient).
      seed: sampling seed; paths are a pure function of (seed, step).
      inner_steps: SUMNAS k.
      inner_learning_rate: SUMNAS alpha (paper: 0.05).
      inner_momentum: SUMNAS inner momentum (paper: 0.9), fresh per sub-model.
      fair_reduction: FairNAS "mean" or "sum" of the m gradients.
      cosine: whether the outer learning rate follows a cosine schedule.
      jit_compile: XLA-compile the step.
      distribution: the `tf.distribute.Strategy` the model and this trainer's
        variables were created under (default: the current one); FairNAS and
        SUMNAS split their sub-models over its replicas.
      trim_interval: see `tfmetanas.memory.FirstCallTrimmed` (``train.trim_interval``).

    Example:
      trainer = SupernetTrainer(model, "sumnas", learning_rate=1.0, total_steps=1000)
      metrics = trainer.train_step(images, labels)

    References: Guo et al., arXiv:1904.00420; Chu et al., arXiv:1907.01845;
      Ha et al., ICLR 2022 (SUMNAS), Algorithm 1.
    """

    def __init__(self, model, strategy, *, learning_rate, total_steps, momentum=0.0,
                 weight_decay=0.0, seed=0, inner_steps=1, inner_learning_rate=0.05,
                 inner_momentum=0.9, fair_reduction="mean", cosine=True, jit_compile=False,
                 distribution=None, trim_interval=memory.DEFAULT_INTERVAL):
        if strategy not in STRATEGIES:
            raise errors.ConfigError(f"Unknown supernet strategy {strategy!r}; valid: {STRATEGIES}.")
        if fair_reduction not in ("mean", "sum"):
            raise errors.ConfigError(f"fair_reduction must be 'mean' or 'sum', not {fair_reduction!r}.")
        if int(inner_steps) < 1:
            raise errors.ConfigError(f"SUMNAS inner_steps must be >= 1, got {inner_steps}.")
        if learning_rate <= 0 or (strategy == "sumnas" and inner_learning_rate <= 0):
            raise errors.ConfigError(
                f"Learning rates must be > 0, got {learning_rate} (outer) and "
                f"{inner_learning_rate} (inner)."
            )
        self.model, self.strategy = model, strategy
        self.fm = params_lib.FunctionalModel(model)
        self.seed = int(seed)
        self.inner_steps = int(inner_steps)
        self.fair_reduction = fair_reduction
        lr = cosine_schedule(learning_rate, total_steps) if cosine else learning_rate
        self.learning_rate = lr if callable(lr) else (lambda step: lr)
        self.outer_rule = rules.SGD(lr, momentum=momentum, weight_decay=weight_decay)
        self.inner_rule = rules.SGD(inner_learning_rate, momentum=inner_momentum)
        self.paths = self.fm.paths_of("weights")
        if not params_lib.Packing.supports(self.fm.params("weights")):
            raise errors.ConfigError(
                "The supernet trainer packs the weights into one vector: they need one dtype "
                "and fully known shapes (every supernet here uses float32 weights).")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.momentum_buffers = {}
        if momentum:
            for p in self.paths:
                v = self.fm.variables_by_path[p]
                self.momentum_buffers[p] = tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                                       name="momentum/" + p.replace("/", "__"))
        self.distribution = distribution or tf.distribute.get_strategy()
        if strategy == "spos" and self.distribution.num_replicas_in_sync > 1:
            raise errors.ConfigError(
                "SPOS trains one sampled path per step: there are no sub-models to split over "
                f"{self.distribution.num_replicas_in_sync} replicas. Use train.distribute='none', "
                "or train.strategy='fairnas'/'sumnas', whose m sub-models per step are split."
            )

        def distributed_step(images, labels):
            per_replica = self.distribution.run(self._step, args=(images, labels))
            # Every replica returns the same (all-reduced) values.
            return self.distribution.experimental_local_results(per_replica)[0]

        self._train_step = compiled.step(distributed_step, jit_compile, trim_interval)

    def checkpoint_items(self):
        """Objects to put in a `tf.train.Checkpoint` (model, step, momentum).

        Every variable of the supernet is listed too, by its position in
        ``model.variables`` (Keras' layer names carry process-wide counters):
        Keras does not track layers kept in Python lists (the choice layers,
        the cells) for `tf.train.Checkpoint`, so ``model`` alone saves only a
        few of them.
        """
        every = {f"v{i:05d}": v for i, v in enumerate(self.model.variables)}
        # Momentum by path (what older checkpoints hold) and by position.
        buffers = list(self.momentum_buffers.items())
        return {"model": self.model, "step": self.step, "variables": every,
                "momentum": {p.replace("/", "__"): v for p, v in buffers},
                "momentum_at": {f"m{i:05d}": v for i, (_, v) in enumerate(buffers)}}

    # ---- pieces -----------------------------------------------------------

    def _loss(self, params, state, images, labels, arch):
        logits, new_state = self.fm(params, state, images, training=True, arch=arch)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
        return loss, (tf.reduce_mean(tf.cast(correct, tf.float32)), new_state)

    def _grads(self, params, state, images, labels, arch):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss, (accuracy, new_state) = self._loss(params, state, images, labels, arch)
        grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return loss, accuracy, grads, new_state

    def sample(self, step):
        """Sub-model architectures of `step`: int32 [num_paths, num_layers]."""
        num_layers, num_choices = self.model.num_layers, self.model.num_choices
        if self.strategy == "spos":
            return sn.sample_uniform(self.seed, step, num_layers, num_choices)[None]
        return sn.sample_fair(self.seed, step, num_layers, num_choices)

    # ---- one step ---------------------------------------------------------

    def _adapt(self, flat, layout, state, images, labels, arch):
        """SUMNAS inner loop: k SGD steps from the packed weights `flat`.

        A `tf.while_loop` (the graph does not grow with k; Reptile is first
        order) that carries the weights and the momentum as one vector each
        (`params_lib.Packing`, as `inner.TaskLearner` does), not one loop
        variable per tensor. Returns the loss and accuracy before adaptation,
        the adapted packed weights and the BN state.
        """
        pack_state, unpack_state = _packing_of(state)
        flat_key = rules.FLAT

        def body(j, fast, rule_state, state, first):
            loss, accuracy, grads, state = self._grads(
                layout.unpack(fast), unpack_state(state), images, labels, arch)
            new, rule_state = self.inner_rule.apply(
                j, {flat_key: layout.pack(grads)}, {flat_key: fast}, rule_state)
            # Report the loss before adaptation (inner step 0).
            first = tf.cond(tf.equal(j, 0), lambda: tf.stack([loss, accuracy]), lambda: first)
            return j + 1, new[flat_key], rule_state, pack_state(state), first

        _, fast, _, state, first = tf.while_loop(
            lambda j, *_: j < self.inner_steps,
            body,
            (tf.constant(0), flat, self.inner_rule.init({flat_key: flat}), pack_state(state),
             tf.zeros([2])),
            parallel_iterations=1,
        )
        return first[0], first[1], fast, unpack_state(state)

    def _step(self, images, labels):
        step = self.step.read_value()
        archs = self.sample(step)
        num_paths = self.model.num_choices if self.strategy != "spos" else 1
        params = self.fm.params("weights")
        # The weights, their pseudo-gradients and the momentum travel packed
        # into one vector each: loops of a few variables and one update,
        # instead of one loop variable and one update per tensor (a MobileNet
        # supernet has about 2,300).
        layout = params_lib.Packing(params)
        flat = layout.pack(params)
        state = self.fm.state()
        pack_state, unpack_state = _packing_of(state)
        # This replica's sub-models: r, r + R, ... (module docstring).
        num_replicas = replicas.num_replicas()
        replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
        first = tf.cast(replica_id, tf.int32) if num_replicas > 1 else tf.constant(0)

        # Sub-models run one after another in a `tf.while_loop` (the graph
        # holds one forward/backward, not m); BN statistics are threaded.
        def submodel(i, total, state, metrics):
            arch = archs[i]
            state = unpack_state(state)
            if self.strategy == "sumnas":
                loss, accuracy, fast, state = self._adapt(flat, layout, state, images, labels,
                                                          arch)
                # Reptile difference theta - theta_i^(k).
                direction = flat - fast
            else:
                # Unpacked inside the loop: the loop captures one vector, not
                # every weight tensor.
                loss, accuracy, grads, state = self._grads(layout.unpack(flat), state, images,
                                                           labels, arch)
                direction = layout.pack(grads)
            return (i + num_replicas, total + direction, pack_state(state),
                    metrics + tf.stack([loss, accuracy]))

        _, total, state, metrics = tf.while_loop(
            lambda i, *_: i < num_paths,
            submodel,
            (first, tf.zeros_like(flat), pack_state(state), tf.zeros([2])),
            parallel_iterations=1,
        )
        state = unpack_state(state)
        if num_replicas > 1:
            ctx = tf.distribute.get_replica_context()
            total, metrics = ctx.all_reduce(tf.distribute.ReduceOp.SUM, (total, metrics))
            state = replicas.all_reduce_mean(state)
        metrics = metrics / float(num_paths)
        if self.strategy == "sumnas" or self.fair_reduction == "mean":
            meta_grad = total / float(num_paths)
        else:
            meta_grad = total
        flat_key = rules.FLAT
        momentum = {flat_key: layout.pack({p: b.read_value()
                                           for p, b in self.momentum_buffers.items()})
                    } if self.momentum_buffers else {}
        rule_state = rules.SGDState(momentum=momentum)
        new, new_rule_state = self.outer_rule.apply(step, {flat_key: meta_grad},
                                                    {flat_key: flat}, rule_state)
        new_flat, new_momentum = new[flat_key], new_rule_state.momentum.get(flat_key)
        if self.strategy == "spos":
            # Untouched candidates keep their weights and momentum, as PyTorch
            # SGD skips parameters whose gradient is None. (Fair sampling
            # touches every candidate every step.)
            touched = sn.touched_vector(self.model, layout.paths, archs[0])
            mask = tf.gather(touched, _segment_ids(layout.sizes))
            new_flat = tf.where(mask, new_flat, flat)
            if new_momentum is not None:
                new_momentum = tf.where(mask, new_momentum, momentum[flat_key])
        # Every replica holds the same values: assigned without another all-reduce.
        new_params = layout.unpack(new_flat)
        replicas.assign_synced([self.fm.variables_by_path[p] for p in layout.paths],
                               [new_params[p] for p in layout.paths])
        if new_momentum is not None:
            buffers = layout.unpack(new_momentum)
            replicas.assign_synced([self.momentum_buffers[p] for p in layout.paths],
                                   [buffers[p] for p in layout.paths])
        replicas.assign_synced([self.fm.state_variables_by_path[p] for p in state],
                               list(state.values()))
        replicas.assign_synced([self.step], [step + 1])
        return {
            "loss": metrics[0],
            "accuracy": metrics[1],
            "grad_norm": tf.norm(meta_grad),
            "param_norm": tf.norm(new_flat),
            "learning_rate": tf.cast(self.learning_rate(step), tf.float32),
        }

    def release(self):
        """Lets the training step's graphs go (`compiled.Step.release`): a process
        that goes on to rank or search the trained supernet no longer needs them.
        `train_step` cannot be called afterwards."""
        self._train_step.release()
        gc.collect()

    def train_step(self, images, labels):
        """One step on a batch; returns scalar metrics (tensors).

        Args:
          images: float32 [B, H, W, C].
          labels: int32 [B].
        """
        return self._train_step(tf.convert_to_tensor(images, tf.float32),
                                tf.convert_to_tensor(labels, tf.int32))
