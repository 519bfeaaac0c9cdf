"""Algorithms by name: a task learner x a meta-learner, built from a config.

``build_algorithm(config, model, kind)`` reads the ``inner`` and ``meta``
sections of a training config and returns an `Algorithm`: the task learner,
the meta-learner, which derivative order to use at a given iteration, and the
meta-test adaptation procedure. Algorithms never read flags.

Config keys (units in brackets):
  inner.steps            inner steps in meta-training
  inner.eval_steps       inner steps at meta-test (validation and test)
  inner.rule             "sgd" | "adam" | "lslr" | "alfa"
  inner.lr               inner learning rate (LSLR: initial value; ALFA: initial alpha0)
  inner.adam_beta1       Adam beta1 (Reptile/METANAS: 0)
  inner.weight_decay     L2 weight decay of the inner rule
  inner.bn_mode          "transductive" | "running"
  inner.persistent_state keep the inner rule's state (Adam moments) across tasks
                         (Reptile: as the Reptile code does)
  inner.while_loop       Reptile: inner steps in a tf.while_loop (True) or unrolled
  inner.alfa.layers      ALFA generator depth (3, the paper; the official code has 2)
  inner.alfa.init_beta   ALFA initial weight-decay post-multiplier beta0 (1.0)
  meta.algorithm         "maml" | "reptile" | "none"
  meta.meta_batch_size   tasks per meta-step (global)
  meta.second_order      MAML: exact second-order meta-gradients
  meta.optimizer         MAML outer optimizer: "adam" | "sgd"
  meta.lr                outer learning rate (Reptile: weights step size)
  meta.schedule          "constant" | "cosine" | "linear" (linear: to 0, Reptile)
  meta.min_lr            cosine/linear floor
  meta.step_sizes        Reptile: {group: meta step size}
  meta.groups            MAML: model parameter groups the outer loop learns
                         (("weights", "arch", "meta"); ALFA+Random Init: ());
                         the update rules' own variables are always learned
  meta.msl               MAML++ multi-step loss (False)
  meta.msl_epochs        MSL annealing epochs (10)
  meta.iterations_per_epoch  meta-iterations per MSL epoch (500)
  meta.first_order_until MAML++ DA: first order before this iteration (0)
"""

import keras
import tensorflow as tf

from tfmetanas import errors, registry
from tfmetanas.meta import alfa, inner, learners, mamlpp, rules
from tfmetanas.models import params as params_lib

ALGORITHMS = registry.Registry("meta-learning algorithm")
INNER_RULES = registry.Registry("inner-loop update rule")


def _get(section, key, default):
    if section is None:
        return default
    return section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)


@INNER_RULES.register("sgd")
def _sgd(inner_config, fmodel, group):
    del fmodel, group
    return rules.SGD(
        float(_get(inner_config, "lr", 0.4)),
        momentum=float(_get(inner_config, "momentum", 0.0)),
        weight_decay=float(_get(inner_config, "weight_decay", 0.0)),
    )


@INNER_RULES.register("adam")
def _adam(inner_config, fmodel, group):
    del fmodel, group
    return rules.Adam(
        float(_get(inner_config, "lr", 1e-3)),
        beta1=float(_get(inner_config, "adam_beta1", 0.0)),
        beta2=float(_get(inner_config, "adam_beta2", 0.999)),
        weight_decay=float(_get(inner_config, "weight_decay", 0.0)),
    )


@INNER_RULES.register("lslr")
def _lslr(inner_config, fmodel, group):
    return rules.LSLR(
        fmodel.paths_of(group), int(_get(inner_config, "steps", 1)), float(_get(inner_config, "lr", 0.1))
    )


@INNER_RULES.register("alfa")
def _alfa(inner_config, fmodel, group):
    alfa_config = _get(inner_config, "alfa", None)
    return alfa.ALFA(
        fmodel.paths_of(group),
        int(_get(inner_config, "steps", 1)),
        float(_get(inner_config, "lr", 0.01)),
        layers=int(_get(alfa_config, "layers", 3)),
        init_beta=float(_get(alfa_config, "init_beta", 1.0)),
    )


def step_weights_from_config(config):
    """MAML++ MSL weights ``iteration -> [k]`` if ``meta.msl``, else None (last step)."""
    meta = config.meta
    if not bool(_get(meta, "msl", False)):
        return None
    return mamlpp.MSLSchedule(
        int(_get(config.inner, "steps", 5)),
        int(_get(meta, "msl_epochs", 10)),
        int(_get(meta, "iterations_per_epoch", 500)),
    )


def outer_schedule(meta_config, total_steps, base_lr):
    """A Keras learning-rate schedule over meta-iterations."""
    schedule = _get(meta_config, "schedule", "constant")
    min_lr = float(_get(meta_config, "min_lr", 0.0))
    if schedule == "constant":
        return float(base_lr)
    if schedule == "cosine":
        # Cosine annealing to min_lr (MAML++ "CA"; alpha is the floor's fraction).
        return keras.optimizers.schedules.CosineDecay(
            float(base_lr), max(int(total_steps), 1), alpha=min_lr / float(base_lr) if base_lr else 0.0
        )
    if schedule == "linear":
        return keras.optimizers.schedules.PolynomialDecay(
            float(base_lr), max(int(total_steps), 1), end_learning_rate=min_lr, power=1.0
        )
    raise errors.ConfigError(
        f"Unknown meta.schedule {schedule!r}; valid: 'constant', 'cosine', 'linear'."
    )


class Algorithm:
    """A task learner and a meta-learner, plus the meta-test procedure.

    Attributes:
      learner: the `TaskLearner`.
      meta_learner: the `MetaLearner`.
      eval_steps: inner steps at meta-test.
    """

    def __init__(self, learner, meta_learner, eval_steps, second_order=False, first_order_until=0):
        self.learner = learner
        self.meta_learner = meta_learner
        self.eval_steps = int(eval_steps)
        self._second_order = bool(second_order)
        self.first_order_until = int(first_order_until)

    def second_order(self, iteration):
        """Derivative order at `iteration` (MAML++ "DA": first order until a given iteration)."""
        return self._second_order and iteration >= self.first_order_until

    def step_options(self, iteration):
        """Keyword arguments of the meta-step at `iteration`.

        The trainer traces one step function per distinct value (MAML++'s DA
        switches `second_order`; METANAS' warm-up switches `adapt_groups`) and
        releases the previous one when the value changes: values are meant to
        change rarely and not to come back (one that did would be traced again).
        """
        return {"second_order": self.second_order(iteration)}

    def record(self, result):
        """Per-task tensors the evaluator keeps besides the metric (none here)."""
        del result
        return {}

    def record_spec(self):
        """`tf.TensorSpec`s of what `record` returns."""
        return {}

    def summarize_records(self, records):
        """Extra summary entries and per-task JSON lines from `record` outputs."""
        del records
        return {}, []

    def test_adapt(self, task):
        """Meta-test adaptation of one task (first order, `eval_steps` steps)."""
        return self.learner.adapt(task, num_steps=self.eval_steps, use_while_loop=True,
                                  keep_rule_states=False)

    def scalars(self, iteration):
        """Summary values that depend only on the iteration and the variables.

        ``msl/weights`` ([k], MAML++ MSL), ``meta/second_order`` (DA),
        ``lr/inner/<path>/step_j`` (LSLR rates and ALFA's alpha0 post-multipliers),
        ``alfa/beta0/<path>/step_j``. The generated ALFA alpha/beta of a task
        come from `tfmetanas.meta.alfa.hyperparameter_trace`.
        """
        out = {"meta/second_order": float(self.second_order(iteration))}
        weights_fn = getattr(self.meta_learner, "step_weights", None)
        if weights_fn is not None:
            out["msl/weights"] = weights_fn(iteration)
        for rule in self.learner.rules.values():
            if isinstance(rule, rules.LSLR):
                for path in rule.paths:
                    for j, v in enumerate(rule.rates[path].numpy()):
                        out[f"lr/inner/{path}/step_{j}"] = float(v)
            elif isinstance(rule, alfa.ALFA):
                for path in rule.paths:
                    for j, v in enumerate(rule.alpha0[path].numpy()):
                        out[f"lr/inner/{path}/step_{j}"] = float(v)
                    for j, v in enumerate(rule.beta0[path].numpy()):
                        out[f"alfa/beta0/{path}/step_{j}"] = float(v)
        return out

    @property
    def trackables(self):
        """What a checkpoint must hold besides the model."""
        out = {"rule_variables": {v.path: v for v in self.learner.variables}}
        if self.learner.rule_state_variables is not None:
            out["rule_state"] = tf.nest.flatten(self.learner.rule_state_variables)
        out.update(self.meta_learner.optimizers)
        return out


def group_rule_config(inner_config, group):
    """The inner-rule settings of one group: ``inner`` overridden by ``inner.<group>``.

    E.g. METANAS adapts the architecture with its own Adam lr and weight decay:
    ``config.inner.arch = {"lr": 5e-4, "weight_decay": 1e-3}``.
    """
    merged = {k: inner_config[k] for k in inner_config.keys()} if hasattr(inner_config, "keys") \
        else dict(vars(inner_config))
    override = merged.pop(group, None) if group in params_lib.GROUPS else None
    for other in params_lib.GROUPS:
        merged.pop(other, None)
    if override:
        merged.update({k: override[k] for k in override.keys()})
    return merged


def build_task_learner(config, fmodel, kind, forward_kwargs=inner.default_forward_kwargs):
    inner_config = config.inner
    groups = tuple(_get(inner_config, "groups", ("weights",)))
    rules_by_group = {}
    for g in groups:
        group_config = group_rule_config(inner_config, g)
        rule_builder = INNER_RULES.get(_get(group_config, "rule", "sgd"))
        rules_by_group[g] = rule_builder(group_config, fmodel, g)
    return inner.TaskLearner(
        fmodel,
        rules_by_group,
        int(_get(inner_config, "steps", 5)),
        kind=kind,
        bn_mode=_get(inner_config, "bn_mode", "transductive"),
        forward_kwargs=forward_kwargs,
        batch_size=int(_get(inner_config, "batch_size", 0)),
        batch_seed=int(_get(_get(config, "train", None), "seed", 0)),
        persistent_rule_state=bool(_get(inner_config, "persistent_state", False)),
    )


@ALGORITHMS.register("maml")
def _maml(config, learner, total_steps):
    meta = config.meta
    lr = outer_schedule(meta, total_steps, float(_get(meta, "lr", 1e-3)))
    name = _get(meta, "optimizer", "adam")
    if name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=lr, name="meta_adam")
    elif name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=lr, name="meta_sgd")
    else:
        raise errors.ConfigError(f"Unknown meta.optimizer {name!r}; valid: 'adam', 'sgd'.")
    groups = tuple(_get(meta, "groups", ("weights", "arch", "meta")))
    unknown = set(groups) - set(params_lib.GROUPS)
    if unknown:
        raise errors.ConfigError(
            f"Unknown meta.groups {sorted(unknown)}; valid: {params_lib.GROUPS}."
        )
    return learners.MAML(
        learner, optimizer, step_weights=step_weights_from_config(config), groups=groups,
        parallel_tasks=int(_get(meta, "parallel_tasks", 1)),
    )


@ALGORITHMS.register("reptile")
def _reptile(config, learner, total_steps):
    meta = config.meta
    step_sizes = dict(_get(meta, "step_sizes", None) or {"weights": float(_get(meta, "lr", 1.0))})
    return learners.Reptile(
        learner,
        {g: outer_schedule(meta, total_steps, lr) for g, lr in step_sizes.items()},
        while_loop=bool(_get(config.inner, "while_loop", True)),
        parallel_tasks=int(_get(meta, "parallel_tasks", 1)),
    )


@ALGORITHMS.register("none")
def _none(config, learner, total_steps):
    del config, total_steps
    return learners.NoMetaLearning(learner)


def build_algorithm(config, fmodel, kind):
    """The `Algorithm` a training config describes (METANAS for search networks)."""
    from tfmetanas.meta import metanas  # metanas builds on this module.

    if metanas.is_search_network(fmodel.model):
        return metanas.build_algorithm(config, fmodel, kind)
    learner = build_task_learner(config, fmodel, kind)
    meta = config.meta
    if learner.rule_state_variables is not None and _get(meta, "algorithm", "maml") != "reptile":
        raise errors.ConfigError(
            "inner.persistent_state=True needs meta.algorithm='reptile' (the only meta-learner "
            "that carries the inner rule state from task to task)."
        )
    meta_learner = ALGORITHMS.get(_get(meta, "algorithm", "maml"))(
        config, learner, int(config.train.steps)
    )
    return Algorithm(
        learner,
        meta_learner,
        eval_steps=int(_get(config.inner, "eval_steps", learner.inner_steps)),
        second_order=bool(_get(meta, "second_order", False)),
        first_order_until=int(_get(meta, "first_order_until", 0)),
    )
