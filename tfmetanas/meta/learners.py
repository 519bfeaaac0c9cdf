"""Meta-learners: turn the results of task learning into an update of the variables.

- `MAML` (Finn et al., arXiv:1703.03400; MAML++ multi-step loss, Antoniou et
  al., arXiv:1810.09502): loss = mean over tasks of sum_j v_j L_query(theta_j),
  differentiated with respect to every meta-variable (model variables of all
  groups and the update rules' own variables) by an outer tape, first or
  second order, and applied by a Keras optimizer.
- `Reptile` (Nichol et al., arXiv:1803.02999): meta-gradient = theta_meta -
  mean over tasks of theta_task, per parameter group, each group with its own
  meta step size, applied by a Keras SGD (so a step size schedule is a Keras
  schedule).
- `NoMetaLearning`: the reference point: adapts from the random initialisation
  and never updates it.

Any meta-learner composes with any task learner. A meta-step is written for a
replica: it loops over the replica's tasks in a `tf.while_loop` and
accumulates per-task meta-gradients (so graphs and memory do not grow with the
meta-batch), then all-reduces the mean over the global meta-batch through the
optimizer under `tf.distribute` (the default strategy is the no-op one).
"""

import keras
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.meta import replicas
from tfmetanas.models import params as params_lib


def _zeros_like_vars(variables):
    return [tf.zeros(v.shape, v.dtype) for v in variables]


def _task(tasks, index):
    return {k: tf.gather(v, index) for k, v in tasks.items()}


def _dense(g, v):
    if g is None:
        return tf.zeros(v.shape, v.dtype)
    return tf.convert_to_tensor(g)


def _global_batch_fraction(local_batch):
    """1 / global meta-batch, for a replica that holds `local_batch` tasks of it.

    Keras 3's TensorFlow optimizer *sums* gradients over replicas
    (`TFOptimizer._backend_update_step` -> `_all_reduce_sum_gradients`, an
    all-reduce with `ReduceOp.SUM` in the replica context) before its update
    step; per-task terms scaled by this fraction therefore add up to the mean
    over every task of the global meta-batch. tests/experiment/distribute_test.py
    checks it: a 2-replica meta-step equals the 1-device one.
    """
    return 1.0 / (local_batch * replicas.num_replicas())


class MetaLearner:
    """Interface: `variables`, `optimizers`, `replica_step(tasks, iteration)`.

    ``parallel_tasks``: how many tasks of a meta-batch the loop over tasks may
    run at once (`tf.while_loop`'s ``parallel_iterations``). The sums over
    tasks stay in task order, so results do not change; memory grows by one
    task's tensors per extra task. Pays off with ``train.intra_op_threads=1``
    on CPUs, where one task's ops leave cores idle.
    """

    def __init__(self, learner, parallel_tasks=1):
        self.learner = learner
        if int(parallel_tasks) < 1:
            raise errors.ConfigError(f"meta.parallel_tasks must be >= 1, got {parallel_tasks}.")
        self.parallel_tasks = int(parallel_tasks)

    @property
    def variables(self):
        raise NotImplementedError  # abstract interface

    @property
    def optimizers(self):
        return {}

    def replica_step(self, tasks, iteration, second_order=False, adapt_groups=None):
        """One meta-step on this replica's tasks.

        Args:
          tasks: batched task dict.
          iteration: the meta-iteration (scalar tensor).
          second_order: exact second-order meta-gradients (MAML family).
          adapt_groups: the groups the task learner adapts at this iteration
            (default: all of its rules' groups). A group the learner could
            adapt but does not (METANAS' architecture during warm-up) is
            frozen: neither adapted nor meta-updated.
        """
        raise NotImplementedError  # abstract interface

    def _frozen_groups(self, adapt_groups):
        if adapt_groups is None:
            return frozenset()
        return frozenset(self.learner.rules) - frozenset(adapt_groups)

    def build(self):
        """Creates the optimizers' slots now (eagerly, under the strategy's scope).

        Otherwise they would be created inside the first `strategy.run`, in a
        replica context; built up front they also exist before a checkpoint
        restores into them.
        """
        for optimizer, variables in self._optimizer_variables():
            if variables and not optimizer.built:
                optimizer.build(variables)

    def _optimizer_variables(self):
        return []

    def _state_mean_update(self, state_mean):
        """Assigns the mean over every task (all replicas) of the BN state after adaptation.

        `state_mean` is this replica's mean over its tasks. Replicas hold equally
        many tasks, so the mean of the replicas' means is the mean over the
        global meta-batch; every replica assigns the same value. Nothing for a
        model whose training calls leave the state alone (empty `state_mean`).
        """
        if not state_mean:
            return
        state = replicas.all_reduce_mean(state_mean)
        fm = self.learner.fmodel
        replicas.assign_synced([fm.state_variables_by_path[p] for p in state], list(state.values()))


class MAML(MetaLearner):
    """MAML with the multi-step loss (v = one-hot on the last step is plain MAML).

    Args:
      learner: the `TaskLearner`.
      optimizer: a Keras optimizer (Adam in MAML and MAML++).
      step_weights: ``iteration -> [k] tensor`` of MSL weights v_j, or None for
        the last step only.
      groups: which meta-variable groups the outer loop learns (default: all
        groups of the model, plus the rules' own variables).

    References: arXiv:1703.03400, arXiv:1810.09502 (Section 4, MSL).
    """

    def __init__(self, learner, optimizer, step_weights=None, groups=("weights", "arch", "meta"),
                 parallel_tasks=1):
        super().__init__(learner, parallel_tasks)
        self.optimizer = optimizer
        self.step_weights = step_weights
        self.groups = tuple(groups)

    @property
    def variables(self):
        fm = self.learner.fmodel
        model_vars = [v for v in fm.trainable_variables if fm.group_of[v.path] in self.groups]
        return model_vars + list(self.learner.variables)

    @property
    def optimizers(self):
        return {"optimizer": self.optimizer}

    def _optimizer_variables(self):
        return [(self.optimizer, self.variables)]

    def task_loss(self, result, weights):
        if weights is None:
            return result.query_losses[-1]
        return tf.reduce_sum(weights * result.query_losses)

    def replica_step(self, tasks, iteration, second_order=False, adapt_groups=None):
        variables = self.variables
        frozen = self._frozen_groups(adapt_groups)
        fm = self.learner.fmodel
        is_frozen = [fm.group_of.get(v.path) in frozen for v in variables]
        batch = tasks["support_x"].shape[0]
        k = self.learner.inner_steps
        weights = None if self.step_weights is None else self.step_weights(iteration)
        track_all = weights is not None
        num_tracked = k if track_all else 1
        dtype = tasks["support_x"].dtype

        def body(b, grad_sum, state_sum, loss_sum, ql_sum, qm_sum):
            task = _task(tasks, b)
            with tf.GradientTape() as tape:
                result = self.learner.adapt(
                    task, second_order=second_order, track_all_steps=track_all,
                    groups=adapt_groups,
                )
                loss = self.task_loss(result, weights)
            grads = tape.gradient(loss, variables)
            grads = [None if f else g for g, f in zip(grads, is_frozen)]
            grad_sum = [a + _dense(g, v) for a, g, v in zip(grad_sum, grads, variables)]
            state_sum = {p: state_sum[p] + result.state[p] for p in state_sum}
            return (
                b + 1,
                grad_sum,
                state_sum,
                loss_sum + loss,
                ql_sum + result.query_losses,
                qm_sum + result.query_metrics,
            )

        init = (
            tf.constant(0),
            _zeros_like_vars(variables),
            {p: tf.zeros_like(v) for p, v in fm.training_state().items()},
            tf.zeros([], dtype),
            tf.zeros([num_tracked], dtype),
            tf.zeros([num_tracked], dtype),
        )
        _, grad_sum, state_sum, loss_sum, ql_sum, qm_sum = tf.while_loop(
            lambda b, *_: b < batch, body, init, parallel_iterations=self.parallel_tasks
        )
        # Gradients are scaled by 1 / global meta-batch and *summed* across
        # replicas by the optimizer, i.e. the mean over every task.
        scale = _global_batch_fraction(batch)
        grads = [g * params_lib.shared_constant(scale, g.dtype) for g in grad_sum]
        self.optimizer.apply_gradients(zip(grads, variables))
        self._state_mean_update({p: s / batch for p, s in state_sum.items()})
        return {
            "meta/loss": loss_sum / batch,
            "query/loss": ql_sum / batch,
            "query/metric": qm_sum / batch,
            "meta/grad_norm": tf.linalg.global_norm(grads),
        }


class Reptile(MetaLearner):
    """Reptile with a meta step size (and Keras SGD) per parameter group.

    Args:
      learner: the `TaskLearner` (Adam with beta1 = 0 in the Reptile paper).
      step_sizes: ``{group: float or keras schedule}``, e.g. ``{"weights": 1.0,
        "arch": 0.6}`` for METANAS; groups absent here are not meta-learned.
      while_loop: run each task's inner steps in a `tf.while_loop` (one traced
        step instead of ``inner.steps`` copies: faster to compile, the same
        numbers); False unrolls them in Python.

    References: arXiv:1803.02999 (Algorithm 2, batched version).
    """

    def __init__(self, learner, step_sizes, while_loop=True, parallel_tasks=1):
        super().__init__(learner, parallel_tasks)
        self.while_loop = bool(while_loop)
        unknown = set(step_sizes) - set(learner.rules)
        if unknown:
            raise errors.ConfigError(
                f"Reptile step sizes for groups {sorted(unknown)} that the task learner does not "
                f"adapt (it adapts {sorted(learner.rules)})."
            )
        self.step_sizes = dict(step_sizes)
        self.group_optimizers = {
            g: keras.optimizers.SGD(learning_rate=lr, name=f"reptile_{g}")
            for g, lr in self.step_sizes.items()
        }

    @property
    def variables(self):
        fm = self.learner.fmodel
        return [v for g in self.step_sizes for v in fm.variables(g)]

    @property
    def optimizers(self):
        return {f"optimizer_{g}": o for g, o in self.group_optimizers.items()}

    def _optimizer_variables(self):
        fm = self.learner.fmodel
        return [(o, fm.variables(g)) for g, o in self.group_optimizers.items()]

    def replica_step(self, tasks, iteration, second_order=False, adapt_groups=None):
        del iteration
        if second_order:
            raise errors.ConfigError("Reptile is first order: set meta.second_order=False.")
        fm = self.learner.fmodel
        batch = tasks["support_x"].shape[0]
        meta_params = self.learner.initial_params()
        dtype = tasks["support_x"].dtype

        persistent = self.learner.rule_state_variables is not None
        # The sums over tasks are carried packed, one vector per group and one
        # for the BN state (`params.Packing`): a loop of a few variables
        # instead of hundreds, and Reptile's update a few ops per group.
        layouts = params_lib.Packing.by_group(meta_params, fm.group_of)
        state = fm.training_state()
        state_layout = params_lib.Packing.if_supported(state)

        def body(b, param_sum, state_sum, ql_sum, qm_sum, rule_states):
            result = self.learner.adapt(
                _task(tasks, b),
                params=meta_params,
                track_all_steps=False,
                groups=adapt_groups,
                use_while_loop=self.while_loop,
                rule_states=rule_states if persistent else None,
                keep_rule_states=persistent,
            )
            param_sum = {g: param_sum[g] + layout.pack(result.params)
                         for g, layout in layouts.items()}
            if state_layout is None:
                state_sum = {p: state_sum[p] + result.state[p] for p in state_sum}
            else:
                state_sum = state_sum + state_layout.pack(result.state)
            if persistent:
                rule_states = result.rule_states
            return (b + 1, param_sum, state_sum, ql_sum + result.query_losses[-1],
                    qm_sum + result.query_metrics[-1], rule_states)

        # With a persistent rule state, the tasks run one after the other and
        # each continues the previous one's rule state (the Reptile code's
        # inner Adam); otherwise `rule_states` is an unused placeholder.
        init = (
            tf.constant(0),
            {g: tf.zeros([sum(layout.sizes)], layout.dtype) for g, layout in layouts.items()},
            {p: tf.zeros_like(v) for p, v in state.items()} if state_layout is None
            else tf.zeros([sum(state_layout.sizes)], state_layout.dtype),
            tf.zeros([], dtype),
            tf.zeros([], dtype),
            self.learner.initial_rule_states(meta_params) if persistent else tf.zeros([]),
        )
        _, param_sum, state_sum, ql_sum, qm_sum, rule_states = tf.while_loop(
            lambda b, *_: b < batch, body, init, parallel_iterations=self.parallel_tasks
        )
        if persistent:
            self.learner.assign_rule_states(rule_states)
        # Reptile's meta-gradient theta - mean(theta_task), as a sum of
        # per-task terms scaled by 1 / global meta-batch, so that the
        # optimizers' cross-replica sum is the mean over every task.
        scale = _global_batch_fraction(batch)
        packed_deltas = []
        for group, optimizer in self.group_optimizers.items():
            if group not in layouts:
                continue  # A group without variables in this model.
            layout = layouts[group]
            delta = (batch * layout.pack(meta_params) - param_sum[group]) * scale
            packed_deltas.append(delta)
            deltas = layout.unpack(delta)
            variables = [fm.variables_by_path[p] for p in layout.paths]
            optimizer.apply_gradients(zip([deltas[p] for p in layout.paths], variables))
        if state_layout is None:
            self._state_mean_update({p: s / batch for p, s in state_sum.items()})
        else:
            self._state_mean_update(state_layout.unpack(state_sum / batch))
        return {
            "meta/loss": ql_sum / batch,
            "query/loss": (ql_sum / batch)[None],
            "query/metric": (qm_sum / batch)[None],
            "meta/grad_norm": tf.linalg.global_norm(packed_deltas),
        }


class NoMetaLearning(MetaLearner):
    """Adapts from the random initialisation; never meta-updates (a reference point)."""

    @property
    def variables(self):
        return []

    def replica_step(self, tasks, iteration, second_order=False, adapt_groups=None):
        del iteration, second_order
        batch = tasks["support_x"].shape[0]

        def body(b, ql_sum, qm_sum):
            result = self.learner.adapt(_task(tasks, b), track_all_steps=False, groups=adapt_groups)
            return b + 1, ql_sum + result.query_losses[-1], qm_sum + result.query_metrics[-1]

        _, ql_sum, qm_sum = tf.while_loop(
            lambda b, *_: b < batch,
            body,
            (tf.constant(0), tf.zeros([], tasks["support_x"].dtype), tf.zeros([], tasks["support_x"].dtype)),
        )
        return {
            "meta/loss": ql_sum / batch,
            "query/loss": (ql_sum / batch)[None],
            "query/metric": (qm_sum / batch)[None],
            "meta/grad_norm": tf.zeros([]),
        }
