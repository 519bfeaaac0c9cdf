"""The task learner: adapts parameters to one task's support set.

A task learner is a model (a `FunctionalModel`), the parameter groups it
adapts with one update rule each (`tfmetanas.meta.rules`), a number of inner
steps and the derivative order. It never assigns to variables: it returns the
adapted fast weights, the BN state after adaptation and per-step support and
query losses and metrics, from which any meta-learner (MAML, Reptile, ...)
builds its update.

Two forms of the inner loop:
- unrolled in Python (meta-training; exact second-order meta-gradients by
  nested `tf.GradientTape`s; per-step query losses for MAML++'s MSL);
- `tf.while_loop` (first order only; long meta-test adaptation, e.g. 100
  steps, without a graph that grows with the number of steps).

References: MAML, Finn et al., arXiv:1703.03400 (Algorithm 2).
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.meta import replicas
from tfmetanas.meta import rules as rules_lib
from tfmetanas.models import params as params_lib

KINDS = ("classification", "regression")
BN_MODES = ("transductive", "running")


class TaskResult(NamedTuple):
    """What adapting to one task produced.

    Attributes:
      params: the adapted fast weights ``{path: tensor}`` of the adapted groups.
      state: the BN state after adaptation.
      support_losses: [k] support loss before each inner step.
      query_losses: [m] query loss after each tracked step (m = k when all
        steps are tracked, else 1: after the last step).
      query_metrics: [m] query accuracy (classification) or MSE (regression).
      query_outputs: the query logits/predictions after the last step.
      rule_states: ``{group: state}`` of the update rules after the last step.
    """

    params: dict
    state: dict
    support_losses: tf.Tensor
    query_losses: tf.Tensor
    query_metrics: tf.Tensor
    query_outputs: tf.Tensor
    rule_states: dict = None


class Phase(NamedTuple):
    """A run of inner steps in `TaskLearner.adapt_phases`.

    Attributes:
      num_steps: steps of the phase.
      groups: the parameter groups it updates (the others stay as they are).
      forward_kwargs: ``(step, num_steps) -> dict`` of model-call arguments,
        with the step counted from the phase's start; scalar values.
      restart_rules: groups whose update-rule state starts afresh (`rule.init`)
        at the phase's first step.
    """

    num_steps: int
    groups: tuple
    forward_kwargs: object
    restart_rules: tuple = ()


def default_forward_kwargs(step, num_steps):
    """Call arguments of the fixed backbones: the inner step (per-step BN)."""
    del num_steps
    return {"step": step}


def loss_and_metric(kind, outputs, labels):
    """Mean loss and metric: cross-entropy and accuracy, or MSE and MSE."""
    if kind == "classification":
        labels = tf.cast(labels, tf.int32)
        loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=outputs)
        )
        correct = tf.equal(tf.argmax(outputs, -1, output_type=tf.int32), labels)
        return loss, tf.reduce_mean(tf.cast(correct, outputs.dtype))
    loss = tf.reduce_mean(tf.square(outputs - labels))
    return loss, loss


class TaskLearner:
    """Adapts the model to a task with per-group update rules.

    Args:
      fmodel: the `FunctionalModel`.
      rules: ``{group: UpdateRule}`` for the adapted groups (e.g. ``{"weights":
        SGD(0.4)}``; METANAS adds ``"arch"``).
      inner_steps: k, the number of inner steps.
      kind: "classification" or "regression".
      bn_mode: "transductive" (batch statistics on the query set too, as every
        reference implementation does) or "running" (query set normalised with
        the running statistics, per step with BNRS).
      forward_kwargs: ``(step, num_steps) -> dict`` of extra model-call
        arguments (inner step for per-step BN, temperature for DARTS).
      batch_size: support examples per inner step (0: the whole support set).
        Smaller than the support set, the steps cycle through it in fixed
        shuffled mini-batches, each example once per epoch (Reptile's inner
        loop: 5 steps of 10 over 10-shot 5-way training tasks).
      batch_seed: seed of that fixed shuffle.
      persistent_rule_state: keep the update rules' state (Adam's moments and
        step count) in non-trainable variables: every task starts from it
        instead of from `rule.init`, and meta-learners that support it
        (Reptile) carry it from task to task, as the Reptile code's inner Adam
        does (its slots live outside the variables Reptile resets).
    """

    def __init__(
        self,
        fmodel,
        rules,
        inner_steps,
        kind="classification",
        bn_mode="transductive",
        forward_kwargs=default_forward_kwargs,
        batch_size=0,
        batch_seed=0,
        persistent_rule_state=False,
    ):
        if int(batch_size) < 0:
            raise errors.ConfigError(f"inner.batch_size must be >= 0, got {batch_size}.")
        if kind not in KINDS:
            raise errors.ConfigError(f"Unknown task kind {kind!r}; valid: {KINDS}.")
        if bn_mode not in BN_MODES:
            raise errors.ConfigError(f"Unknown BN mode {bn_mode!r}; valid: {BN_MODES}.")
        self.fmodel = fmodel
        self.rules = dict(rules)
        self.inner_steps = int(inner_steps)
        self.kind = kind
        self.bn_mode = bn_mode
        self.forward_kwargs = forward_kwargs
        self.batch_size = int(batch_size)
        self.batch_seed = int(batch_seed)
        self.rule_state_variables = None
        if persistent_rule_state:
            self.rule_state_variables = tf.nest.map_structure(
                lambda t: tf.Variable(t, trainable=False), self._fresh_rule_states(self.initial_params())
            )

    def _fresh_rule_states(self, params, packed=None):
        """`rule.init` per group; groups in `packed` (``{group: vector}``) start packed."""
        packed = packed or {}
        return {g: rule.init(
            {rules_lib.FLAT: packed[g]} if g in packed else
            {p: v for p, v in params.items() if self.fmodel.group_of[p] == g}
        ) for g, rule in self.rules.items()}

    def initial_rule_states(self, params):
        """Where a task's rules start: the persistent state, or `rule.init`."""
        if self.rule_state_variables is None:
            return self._fresh_rule_states(params)
        return tf.nest.map_structure(tf.convert_to_tensor, self.rule_state_variables)

    def assign_rule_states(self, rule_states):
        """Stores `rule_states` as the persistent state (mean over replicas).

        Under several replicas each replica carries the state through its own
        share of the meta-batch, from the same starting state, and the
        replicas' final states are averaged: not the single-device chain
        through every task in order (README, "Several GPUs and machines").
        """
        if self.rule_state_variables is None:
            raise errors.ConfigError("This task learner keeps no persistent rule state.")
        rule_states = replicas.all_reduce_mean(rule_states)
        replicas.assign_synced(
            tf.nest.flatten(self.rule_state_variables), tf.nest.flatten(rule_states)
        )

    def batch_indices(self, support_size, num_steps, batch_size=None):
        """[num_steps, batch_size] support indices of each inner step, or None.

        None when every step sees the whole support set. Otherwise epochs of
        fixed random permutations of the support set, cut into consecutive
        mini-batches (an epoch's leftover joins the next epoch, as in Reptile's
        code); the permutations are fixed by `batch_seed`, which with the
        random label order of every task gives class-mixed batches.
        `batch_size` None is the learner's own.
        """
        batch_size = self.batch_size if batch_size is None else int(batch_size)
        if not batch_size or batch_size >= support_size:
            return None
        rng = np.random.default_rng(self.batch_seed)
        needed = num_steps * batch_size
        epochs = -(-needed // support_size)
        order = np.concatenate([rng.permutation(support_size) for _ in range(epochs)])
        return tf.constant(order[:needed].reshape(num_steps, batch_size), tf.int32)

    @property
    def variables(self):
        """Meta-variables owned by the update rules (LSLR rates, ALFA networks)."""
        return [v for rule in self.rules.values() for v in rule.variables]

    def initial_params(self, groups=None):
        """Current values of the adapted groups (or of `groups`)."""
        return self.fmodel.params(tuple(groups or self.rules))

    def _query(self, params, state, task, step, num_steps, forward_kwargs=None):
        """Query outputs, loss and metric; `forward_kwargs` defaults to the learner's."""
        training = self.bn_mode == "transductive"
        kwargs = (forward_kwargs or self.forward_kwargs)(step, num_steps)
        outputs, _ = self.fmodel(params, state, task["query_x"], training=training, **kwargs)
        loss, metric = loss_and_metric(self.kind, outputs, task["query_y"])
        return outputs, loss, metric

    def _gradients(self, step, num_steps, params, state, task, second_order, batches=None,
                   kwargs=None, stop_gradients=True):
        """Support loss of one inner step, its gradient and the BN state after it.

        `kwargs` (default ``forward_kwargs(step, num_steps)``) are the model's
        call arguments. First order stops the gradients' own gradients here,
        unless `stop_gradients` is False (the caller stops them once packed).
        """
        x, y = task["support_x"], task["support_y"]
        if batches is not None:
            x, y = tf.gather(x, batches[step]), tf.gather(y, batches[step])
        if kwargs is None:
            kwargs = self.forward_kwargs(step, num_steps)
        with tf.GradientTape() as tape:
            tape.watch(list(params.values()))
            outputs, new_state = self.fmodel(params, state, x, training=True, **kwargs)
            loss, _ = loss_and_metric(self.kind, outputs, y)
        grads = tape.gradient(loss, params)
        if not second_order and stop_gradients:
            grads = {p: tf.stop_gradient(g) for p, g in grads.items()}
        return grads, new_state, loss

    def _step(self, step, num_steps, params, state, rule_states, task, second_order, groups,
              batches=None):
        """One inner step: support loss, gradient, per-group rule update."""
        grads, new_state, loss = self._gradients(
            step, num_steps, params, state, task, second_order, batches
        )
        new_params, new_rule_states = dict(params), dict(rule_states)
        for group in groups:
            paths = [p for p in params if self.fmodel.group_of[p] == group]
            sub_params, new_rule_states[group] = self.rules[group].apply(
                step,
                {p: grads[p] for p in paths},
                {p: params[p] for p in paths},
                rule_states[group],
            )
            new_params.update(sub_params)
        return new_params, new_state, new_rule_states, loss

    def adapt(
        self,
        task,
        params=None,
        state=None,
        num_steps=None,
        second_order=False,
        groups=None,
        track_all_steps=True,
        use_while_loop=False,
        rule_states=None,
        keep_rule_states=True,
    ):
        """Adapts to one task.

        Args:
          task: dict with ``support_x, support_y, query_x, query_y``.
          params: starting fast weights (default: the variables' values of the
            adapted groups, which an outer tape differentiates through).
          state: starting BN state (default: `FunctionalModel.training_state`).
          num_steps: inner steps (default: `inner_steps`).
          second_order: keep the inner gradients differentiable.
          groups: which of the rules' groups to update (default: all); the
            others stay fixed (METANAS warm-up, the "+50" weights-only phase).
          track_all_steps: evaluate the query set after every step (MSL,
            per-step curves) or only after the last.
          use_while_loop: run the steps in `tf.while_loop` (first order only).
          rule_states: continue from these rule states (phased adaptation).
          keep_rule_states: False leaves ``rule_states`` of the result None
            (with `use_while_loop`, the loop's packed rule states are then
            not unpacked: graph nodes nobody reads).

        Returns:
          A `TaskResult`.
        """
        num_steps = self.inner_steps if num_steps is None else int(num_steps)
        groups = tuple(self.rules) if groups is None else tuple(groups)
        if params is None:
            params = self.initial_params()
        if state is None:
            state = self.fmodel.training_state()

        if use_while_loop:
            if second_order:
                raise errors.ConfigError(
                    "A tf.while_loop inner loop is first order only; unroll it for second order."
                )
            phase = Phase(num_steps, groups, self.forward_kwargs)
            return self._adapt_while(task, params, state, rule_states, [phase],
                                     keep_rule_states)
        if rule_states is None:
            rule_states = self.initial_rule_states(params)

        batches = self.batch_indices(task["support_x"].shape[0], num_steps)

        support_losses, query_losses, query_metrics = [], [], []
        outputs = None
        for step in range(num_steps):
            params, state, rule_states, support_loss = self._step(
                step, num_steps, params, state, rule_states, task, second_order, groups, batches
            )
            support_losses.append(support_loss)
            if track_all_steps or step == num_steps - 1:
                outputs, loss, metric = self._query(params, state, task, step, num_steps)
                query_losses.append(loss)
                query_metrics.append(metric)
        if num_steps == 0:
            outputs, loss, metric = self._query(params, state, task, 0, 1)
            support_losses, query_losses, query_metrics = [tf.zeros_like(loss)], [loss], [metric]
        return TaskResult(
            params=params,
            state=state,
            support_losses=tf.stack(support_losses),
            query_losses=tf.stack(query_losses),
            query_metrics=tf.stack(query_metrics),
            query_outputs=outputs,
            rule_states=rule_states if keep_rule_states else None,
        )

    def adapt_phases(self, task, phases, params=None, state=None, queries=None,
                     batch_size=None, keep_rule_states=True):
        """Adapts to one task in phases, all in one `tf.while_loop` (first order).

        Each `Phase` runs its steps on its groups with its own model-call
        arguments, continuing from the previous phase's parameters, BN state
        and rule states (restarting those in its ``restart_rules``). One loop
        body serves every phase, so the graph holds the model's step once,
        not once per phase: METANAS's "50+50" meta-test (weights and
        architecture, then weights only at the final temperature).

        Args:
          task, params, state: as `adapt`.
          phases: `Phase` tuples.
          queries: None, or a list of dicts of model-call arguments (the same
            keys; values may be tensors) to score the query set with after
            the last step, all in one `tf.while_loop` so that the graph holds
            the forward pass once (METANAS: the search network and its
            hard-pruned network). None scores it once with the last phase's
            arguments.
          batch_size: support examples per step of every phase (None: the
            learner's `batch_size`; 0: the whole support set). METANAS's
            meta-test takes its own (the reference's `batch_size_test`).
          keep_rule_states: as `adapt` (False: the packed rule states are not
            unpacked; METANAS's meta-test reads none).

        Returns:
          A `TaskResult` with the support losses of every step and one query
          loss and metric per query (outputs: the last query's).
        """
        phases = [Phase(*p) for p in phases]
        if not phases or any(p.num_steps < 1 for p in phases):
            raise errors.ConfigError(f"Every phase needs at least one step, got {phases}.")
        unknown = {g for p in phases for g in p.groups} - set(self.rules)
        if unknown:
            raise errors.ConfigError(f"Phases update groups without a rule: {sorted(unknown)}.")
        if params is None:
            params = self.initial_params()
        if state is None:
            state = self.fmodel.training_state()
        if queries is not None:
            queries = [dict(q) for q in queries]
            if not queries or any(set(q) != set(queries[0]) for q in queries):
                raise errors.ConfigError(
                    "Queries need at least one entry, all with the same model-call arguments, "
                    f"got {[sorted(q) for q in queries]}."
                )
        if batch_size is not None and int(batch_size) < 0:
            raise errors.ConfigError(f"The batch size must be >= 0, got {batch_size}.")
        return self._adapt_while(task, params, state, None, phases, queries=queries,
                                 batch_size=batch_size, keep_rule_states=keep_rule_states)

    def _adapt_while(self, task, params, state, rule_states, phases, keep_rule_states=True,
                     queries=None, batch_size=None):
        """The inner steps of `phases` in a `tf.while_loop` that carries packed vectors.

        The loop carries one vector per parameter group, one for the BN state
        and, for element-wise rules, packed rule states (`Packing`): the
        same numbers as carrying the dicts, with a loop of a few variables
        instead of hundreds and one update per group instead of one per tensor.
        `rule_states` None starts from `initial_rule_states`, fresh states of
        element-wise rules made packed (one zero vector, not one per tensor).
        """
        support_size = task["support_x"].shape[0]
        tables = [self.batch_indices(support_size, p.num_steps, batch_size) for p in phases]
        batches = None if tables[0] is None else tf.concat(tables, 0)
        starts = np.cumsum([0] + [p.num_steps for p in phases])
        num_steps = int(starts[-1])
        layouts = params_lib.Packing.by_group(params, self.fmodel.group_of)
        packed_rules = {g: g in layouts and self.rules[g].elementwise for g in self.rules}
        fresh = rule_states is None and self.rule_state_variables is None
        if rule_states is None and not fresh:
            rule_states = self.initial_rule_states(params)
        state_layout = params_lib.Packing.if_supported(state)
        pack_state = state_layout is not None
        updated = [g for g in self.rules if any(g in p.groups for p in phases)]

        def to_loop(params, state, rule_states):
            flat = {g: layout.pack(params) for g, layout in layouts.items()}
            if fresh:
                rs = self._fresh_rule_states(params, {g: v for g, v in flat.items()
                                                      if packed_rules[g]})
            else:
                rs = {g: rules_lib.pack_state(s, layouts[g]) if packed_rules[g] else s
                      for g, s in rule_states.items()}
            return flat, state_layout.pack(state) if pack_state else state, rs

        def unpack_params(flat):
            params = {}
            for g, layout in layouts.items():
                params.update(layout.unpack(flat[g]))
            return params

        def from_loop(flat, state, rs):
            params = unpack_params(flat)
            if keep_rule_states:
                rs = {g: rules_lib.unpack_state(s, layouts[g]) if packed_rules[g] else s
                      for g, s in rs.items()}
            else:
                rs = None
            return params, state_layout.unpack(state) if pack_state else state, rs

        def select(pred, new, old):
            return tf.nest.map_structure(lambda a, b: tf.where(pred, a, b), new, old)

        def phase_values(step):
            """(phase index, step within the phase, model-call arguments)."""
            if len(phases) == 1:
                return 0, step, phases[0].forward_kwargs(step, phases[0].num_steps)
            index = tf.add_n([tf.cast(step >= int(b), tf.int32) for b in starts[1:-1]])
            local = step - tf.gather(tf.constant(starts[:-1], tf.int32), index)
            kwargs = {}
            for k, phase in enumerate(phases):
                values = phase.forward_kwargs(local, phase.num_steps)
                if k and set(values) != set(kwargs):
                    raise errors.ConfigError(
                        "Every phase must give the model the same call arguments, got "
                        f"{sorted(kwargs)} and {sorted(values)}."
                    )
                for key, value in values.items():
                    value = tf.convert_to_tensor(value)
                    kwargs[key] = value if k == 0 else tf.where(
                        tf.equal(index, k), value, tf.cast(kwargs[key], value.dtype)
                    )
            return index, local, kwargs

        def body(step, flat, state, rule_states, support_losses):
            index, local, kwargs = phase_values(step)
            params = unpack_params(flat)
            if pack_state:
                state = state_layout.unpack(state)
            # First order: the gradients are stopped once per group, packed.
            grads, state, loss = self._gradients(
                step, num_steps, params, state, task, False, batches, kwargs=kwargs,
                stop_gradients=False,
            )
            flat, rule_states = dict(flat), dict(rule_states)
            for g in updated:
                layout, rule = layouts[g], self.rules[g]
                sub = {p: params[p] for p in layout.paths}
                for k, phase in enumerate(phases):
                    if g in phase.restart_rules:
                        fresh = rule.init({rules_lib.FLAT: flat[g]} if packed_rules[g] else sub)
                        rule_states[g] = select(tf.equal(step, int(starts[k])), fresh,
                                                rule_states[g])
                if packed_rules[g]:
                    new, new_rs = rule.apply(
                        local, {rules_lib.FLAT: tf.stop_gradient(layout.pack(grads))},
                        {rules_lib.FLAT: flat[g]}, rule_states[g],
                    )
                    new = new[rules_lib.FLAT]
                else:
                    new, new_rs = rule.apply(
                        local, {p: tf.stop_gradient(grads[p]) for p in layout.paths}, sub,
                        rule_states[g]
                    )
                    new = layout.pack(new)
                active = [k for k, phase in enumerate(phases) if g in phase.groups]
                if len(active) < len(phases):
                    on = tf.reduce_any(tf.equal(index, active))
                    new, new_rs = select(on, (new, new_rs), (flat[g], rule_states[g]))
                flat[g], rule_states[g] = new, new_rs
            if pack_state:
                state = state_layout.pack(state)
            return step + 1, flat, state, rule_states, support_losses.write(step, loss)

        flat, loop_state, loop_rules = to_loop(params, state, rule_states)
        _, flat, loop_state, loop_rules, support_losses = tf.while_loop(
            lambda step, *_: step < num_steps,
            body,
            (tf.constant(0), flat, loop_state, loop_rules,
             tf.TensorArray(task["support_x"].dtype, num_steps)),
            parallel_iterations=1,
        )
        params, state, rule_states = from_loop(flat, loop_state, loop_rules)
        if queries is None or len(queries) == 1:
            last = phases[-1]
            forward_kwargs = last.forward_kwargs if queries is None else lambda *_: queries[0]
            outputs, loss, metric = self._query(params, state, task, last.num_steps - 1,
                                                last.num_steps, forward_kwargs)
            losses, metrics = loss[None], metric[None]
        else:
            outputs, losses, metrics = self._query_loop(
                task, queries, flat, unpack_params,
                loop_state, state_layout.unpack if pack_state else lambda s: s,
            )
        return TaskResult(
            params=params,
            state=state,
            support_losses=support_losses.stack(),
            query_losses=losses,
            query_metrics=metrics,
            query_outputs=outputs,
            rule_states=rule_states,
        )

    def _query_loop(self, task, queries, flat, unpack_params, loop_state, unpack_state):
        """The query scored once per entry of `queries`, in one `tf.while_loop`.

        The loop reads the packed parameters and state (a few captured
        vectors, unpacked in the body) and picks each query's call arguments
        from stacked values.

        Returns:
          ``(outputs of the last query, losses [n], metrics [n])``.
        """
        n = len(queries)
        stacked = {k: tf.stack([tf.convert_to_tensor(q[k]) for q in queries]) for k in queries[0]}
        dtype = task["query_x"].dtype

        def body(i, outputs, losses, metrics):
            kwargs = {k: v[i] for k, v in stacked.items()}
            out, loss, metric = self._query(unpack_params(flat), unpack_state(loop_state), task,
                                            0, 1, lambda *_: kwargs)
            return i + 1, outputs.write(i, out), losses.write(i, loss), metrics.write(i, metric)

        _, outputs, losses, metrics = tf.while_loop(
            lambda i, *_: i < n,
            body,
            (tf.constant(0), tf.TensorArray(dtype, n), tf.TensorArray(dtype, n),
             tf.TensorArray(dtype, n)),
            parallel_iterations=1,
        )
        return outputs.read(n - 1), losses.stack(), metrics.stack()
