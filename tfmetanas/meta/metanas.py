"""METANAS on the engine: architecture and weights adapted and meta-learned together.

Elsken et al., "Meta-Learning of Neural Architectures for Few-Shot Learning"
(CVPR 2020, arXiv:1912.09744). The search network (`tfmetanas.nas.darts`) is
an ordinary model whose architecture logits alpha/beta live in the ``arch``
parameter group, so METANAS is three small pieces over the engine:

- the **task learner** adapts ``weights`` and ``arch`` on the same support
  batch at every step (paper Eq. 3), each group with its own update rule
  (``inner`` and ``inner.arch``); the architecture gradient is taken on the
  live weights of that step. The softmax temperature is annealed linearly
  from ``metanas.t_max`` to ``metanas.t_min`` over the steps of every task
  (reset per task), which with soft pruning (ops and input subsets below
  ``model.darts.prune_threshold`` are not computed) drives the architecture
  towards one that survives hard pruning;
- **any meta-learner** (paper Algorithm 1): Reptile with a meta step size per
  group (paper: 1.0 for weights, 0.6 for the architecture), or first-order
  MAML and the MAML++/ALFA pieces. Warm-up: before
  ``metanas.warmup_until`` meta-iterations the architecture is frozen,
  neither adapted nor meta-updated (the paper: the first half of training);
- **meta-test** ("50+50"): ``metanas.eval_arch_steps`` steps adapting weights
  and architecture with the annealed temperature, then
  ``metanas.eval_weight_steps`` steps adapting the weights only at
  ``t_min``; the architecture is then hard-pruned at
  ``model.darts.hard_threshold`` (0.01) and the *pruned* network scores the
  query set, without retraining. Per task the evaluator keeps the adapted
  architecture, from which `summarize_records` derives the genotype and the
  parameter count of the pruned network.

Choices where the paper is silent (config values, documented in
docs/metanas.md): the weights' update-rule state is restarted for the "+50"
phase; the temperature of the "+50" phase and of pruning is ``t_min``.
"""

import collections

import numpy as np
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.meta import algorithms, inner
from tfmetanas.nas import darts


def is_search_network(model):
    return isinstance(model, darts.SearchNetwork)


def _get(section, key, default):
    return algorithms._get(section, key, default)


class TemperatureAnnealing:
    """Forward kwargs ``{"temperature": tau_step}``, tau linear from t_max to t_min.

    Step 0 of a task uses t_max and its last step t_min (paper Sec. 4.1: the
    temperature is annealed over task learning and reset for every task).
    """

    def __init__(self, t_max, t_min):
        if not t_max >= t_min > 0:
            raise errors.ConfigError(
                f"METANAS needs t_max >= t_min > 0, got t_max={t_max}, t_min={t_min}."
            )
        self.t_max, self.t_min = float(t_max), float(t_min)

    def temperature(self, step, num_steps):
        frac = tf.cast(step, tf.float32) / float(max(int(num_steps) - 1, 1))
        return self.t_max + (self.t_min - self.t_max) * frac

    def __call__(self, step, num_steps):
        return {"temperature": self.temperature(step, num_steps)}


class ConstantTemperature:
    """Forward kwargs ``{"temperature": t}`` (the weights-only "+50" phase)."""

    def __init__(self, t):
        self.t = float(t)

    def __call__(self, step, num_steps):
        del step, num_steps
        return {"temperature": self.t}


class MetaNAS(algorithms.Algorithm):
    """The METANAS algorithm: task learner, meta-learner, warm-up, 50+50 meta-test.

    Args:
      learner: the `TaskLearner` adapting ``weights`` and ``arch`` with
        `TemperatureAnnealing`.
      meta_learner: any `MetaLearner` over `learner`.
      fixed_learner: the same model and rules with `ConstantTemperature(t_min)`
        (the weights-only phase of meta-test).
      arch_steps, weight_steps: the "50+50" of meta-test.
      warmup_until: meta-iterations before which the architecture is frozen.
      t_min: temperature of the weights-only phase and of hard pruning.
      second_order, first_order_until: as `Algorithm`.
      eval_batch_size: support examples per meta-test step (None or -1: the
        task learner's `batch_size`; 0, or at least the support set's size:
        the whole support set). The reference's
        Omniglot setting takes 10 (its `batch_size_test`), drawn from the 20
        images of a 20-way 1-shot task.
    """

    def __init__(self, learner, meta_learner, fixed_learner, arch_steps, weight_steps,
                 warmup_until, t_min, second_order=False, first_order_until=0,
                 eval_batch_size=None):
        if arch_steps < 1 or weight_steps < 0:
            raise errors.ConfigError(
                f"metanas.eval_arch_steps must be >= 1 and metanas.eval_weight_steps >= 0, got "
                f"{arch_steps} and {weight_steps}."
            )
        if eval_batch_size is not None and (
                isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int)
                or eval_batch_size < -1):
            raise errors.ConfigError(
                "metanas.eval_batch_size must be an integer: -1 (inner.batch_size), 0 (the "
                f"whole support set) or positive, got {eval_batch_size!r}."
            )
        if eval_batch_size == -1:
            eval_batch_size = None
        if "arch" not in learner.rules or "weights" not in learner.rules:
            raise errors.ConfigError(
                "METANAS adapts weights and architecture: set inner.groups=('weights', 'arch'), "
                f"got {tuple(learner.rules)}."
            )
        super().__init__(learner, meta_learner, arch_steps + weight_steps, second_order,
                         first_order_until)
        self.fixed_learner = fixed_learner
        self.arch_steps, self.weight_steps = int(arch_steps), int(weight_steps)
        self.warmup_until = int(warmup_until)
        self.t_min = float(t_min)
        self.eval_batch_size = None if eval_batch_size is None else int(eval_batch_size)
        self.model = learner.fmodel.model
        self.arch_paths = [v.path for v in learner.fmodel.variables("arch")]

    def in_warmup(self, iteration):
        return iteration < self.warmup_until

    def step_options(self, iteration):
        options = super().step_options(iteration)
        if self.in_warmup(iteration):
            options["adapt_groups"] = tuple(g for g in self.learner.rules if g != "arch")
        return options

    def pruned_forward(self, params, state, x):
        """Logits of the hard-pruned network of the (adapted) architecture in `params`."""
        training = self.learner.bn_mode == "transductive"
        outputs, _ = self.learner.fmodel(
            params, state, x, training=training, temperature=self.t_min, hard_prune=True
        )
        return outputs

    def test_adapt(self, task):
        """50+50 adaptation, hard pruning, query scored by the pruned network.

        Returns a `TaskResult` whose last query loss/metric are the pruned
        network's and the one before them the unpruned search network's.
        """
        # Both phases in one loop (`TaskLearner.adapt_phases`): the graph holds
        # the search network's step once.
        phases = [inner.Phase(self.arch_steps, tuple(self.learner.rules),
                              self.learner.forward_kwargs)]
        if self.weight_steps:
            phases.append(inner.Phase(self.weight_steps, ("weights",),
                                      self.fixed_learner.forward_kwargs,
                                      restart_rules=("weights",)))
        # The query is scored by the search network (the last phase's call
        # arguments) and by its hard-pruned network, both in one loop too:
        # hard pruning is a run-time argument of the same forward pass.
        last = phases[-1]
        unpruned = dict(last.forward_kwargs(last.num_steps - 1, last.num_steps))
        unpruned["hard_prune"] = False
        pruned = {**unpruned, "temperature": self.t_min, "hard_prune": True}
        return self.learner.adapt_phases(task, phases, queries=[unpruned, pruned],
                                         batch_size=self.eval_batch_size,
                                         keep_rule_states=False)

    def record(self, result):
        out = {p: result.params[p] for p in self.arch_paths}
        out["unpruned_metric"] = result.query_metrics[-2]
        return out

    def record_spec(self):
        fm = self.learner.fmodel
        spec = {v.path: tf.TensorSpec(v.shape, v.dtype) for v in fm.variables("arch")}
        spec["unpruned_metric"] = tf.TensorSpec([], tf.float32)
        return spec

    def genotype(self, values=None):
        """The hard-pruned genotype of `values` (default: the meta-architecture)."""
        return self.model.genotype(values, temperature=self.t_min,
                                   threshold=self.model.hard_threshold)

    def summarize_records(self, records):
        """Genotypes and pruned parameter counts of every evaluated task.

        Returns:
          ``(extra_summary, lines)``: pruned parameter count mean/min/max,
          the unpruned accuracy, the number of distinct cells and the most
          common normal/reduction cells; and one JSON-able line per task
          (genotype, parameter count, unpruned metric).
        """
        n = len(records["unpruned_metric"])
        lines, counts, normal, reduce = [], [], collections.Counter(), collections.Counter()
        for i in range(n):
            values = {p: tf.constant(records[p][i]) for p in self.arch_paths}
            g = self.genotype(values)
            count = self.model.pruned_param_count(g)
            counts.append(count)
            normal[g.normal.structure()] += 1
            reduce[g.reduce.structure()] += 1
            lines.append({"task": i, "params": count, "genotype": g.to_dict(),
                          "unpruned_metric": float(records["unpruned_metric"][i])})
        unpruned = np.asarray(records["unpruned_metric"], np.float64)
        meta_genotype = self.genotype()
        extra = {
            "pruned_params_mean": float(np.mean(counts)),
            "pruned_params_min": int(np.min(counts)),
            "pruned_params_max": int(np.max(counts)),
            "search_params": int(self.learner.fmodel.count_params(("weights",))),
            "meta_genotype_params": self.model.pruned_param_count(meta_genotype),
            "distinct_normal_cells": len(normal),
            "distinct_reduce_cells": len(reduce),
            "most_common_normal_cell_share": normal.most_common(1)[0][1] / n,
            "most_common_reduce_cell_share": reduce.most_common(1)[0][1] / n,
        }
        if self.learner.kind == "classification":
            extra["unpruned_accuracy_mean"] = float(unpruned.mean() * 100.0)
        else:
            extra["unpruned_mse_mean"] = float(unpruned.mean())
        lines.insert(0, {"task": "meta", "params": extra["meta_genotype_params"],
                         "genotype": meta_genotype.to_dict()})
        return extra, lines

    def scalars(self, iteration):
        out = super().scalars(iteration)
        out["metanas/warmup"] = float(self.in_warmup(iteration))
        out["metanas/t_min"] = self.t_min
        for kind in ("normal", "reduce"):
            alpha = getattr(self.model, f"alpha_{kind}")
            out[f"metanas/alpha_{kind}_entropy"] = float(darts.arch_entropy(alpha.value, self.t_min))
            betas = getattr(self.model, f"beta_{kind}")
            if betas:
                out[f"metanas/beta_{kind}_entropy"] = float(np.mean(
                    [darts.arch_entropy(b.value, self.t_min) for b in betas]))
        return out


def build_algorithm(config, fmodel, kind):
    """METANAS from a training config (``model.name = "darts"``).

    Config keys besides the engine's: ``metanas.t_max``/``t_min`` (temperature
    annealing per task), ``metanas.warmup_until`` (meta-iterations with a frozen
    architecture), ``metanas.eval_arch_steps``/``eval_weight_steps`` (50+50),
    ``metanas.eval_batch_size`` (support examples per meta-test step; -1:
    ``inner.batch_size``);
    ``inner.arch`` overrides the inner rule for the architecture (paper: Adam,
    lr 5e-4 on Omniglot and 1e-3 on mini-ImageNet, weight decay 1e-3).
    """
    section = _get(config, "metanas", None)
    t_max = float(_get(section, "t_max", 1.0))
    t_min = float(_get(section, "t_min", 0.1))
    annealing = TemperatureAnnealing(t_max, t_min)
    learner = algorithms.build_task_learner(config, fmodel, kind, forward_kwargs=annealing)
    if learner.bn_mode == "running" and not getattr(fmodel.model, "running_stats", True):
        raise errors.ConfigError(
            "inner.bn_mode='running' normalises queries with the moving statistics, but "
            "model.darts.running_stats=False never updates them: set it to True (and "
            "model.darts.recompute_cells=0: recomputed cells cannot update statistics)."
        )
    fixed = inner.TaskLearner(
        fmodel, learner.rules, learner.inner_steps, kind=kind, bn_mode=learner.bn_mode,
        forward_kwargs=ConstantTemperature(t_min), batch_size=learner.batch_size,
        batch_seed=learner.batch_seed,
    )
    meta = config.meta
    name = _get(meta, "algorithm", "reptile")
    meta_learner = algorithms.ALGORITHMS.get(name)(config, learner, int(config.train.steps))
    second_order = bool(_get(meta, "second_order", False))
    model = fmodel.model
    if (second_order and name != "reptile"
            and "max_pool_3x3" in model.primitives and model.max_pool_gradient == "native"):
        raise errors.ConfigError(
            "Second-order meta-gradients through max_pool_3x3 need "
            "model.darts.max_pool_gradient='argmax': TensorFlow's max-pooling gradient "
            "drops second-order terms in compiled graphs (docs/performance.md, \"A "
            "TensorFlow bug\"). Set it, or meta.second_order=False."
        )
    warmup = _get(section, "warmup_until", -1)
    if warmup is None or int(warmup) < 0:
        warmup = int(config.train.steps) // 2  # The paper: the first half of meta-training.
    return MetaNAS(
        learner,
        meta_learner,
        fixed,
        arch_steps=int(_get(section, "eval_arch_steps", 50)),
        weight_steps=int(_get(section, "eval_weight_steps", 50)),
        warmup_until=int(warmup),
        t_min=t_min,
        second_order=second_order,
        first_order_until=int(_get(meta, "first_order_until", 0)),
        eval_batch_size=_get(section, "eval_batch_size", None),
    )
