"""ALFA: an inner-loop update rule with generated learning rates and weight decays.

Baik et al., "Meta-Learning with Adaptive Hyperparameters", NeurIPS 2020
(arXiv:2011.00209), Section 3 ("Adaptive Learning of Hyperparameters for
Fast Adaptation"). At inner step j, for each of the L adapted tensors l:

  tau_j      = [mean(grad_1), ..., mean(grad_L), mean(theta_1), ..., mean(theta_L)]
  (alpha1, beta1) = g_phi(tau_j)                    (2L outputs)
  alpha_{l,j} = alpha0_{l,j} * alpha1_l(tau_j)
  beta_{l,j}  = beta0_{l,j}  * beta1_l(tau_j)
  theta_l    <- beta_{l,j} * theta_l - alpha_{l,j} * grad_l

g_phi is an MLP (hidden width 2L, ReLU between layers); alpha0/beta0 are
meta-learned per-step per-layer post-multipliers. phi, alpha0 and beta0 are
``meta`` parameters: learned by the outer loop only.

Choices (docs/mamlpp_alfa.md):
- depth: ``layers`` (config ``inner.alfa.layers``), default 3 as the paper
  says; the official code uses 2 (set ``inner.alfa.layers = 2`` to match it);
- g_phi's last layer starts with zero kernel and unit bias, so that at
  initialisation alpha1 = beta1 = 1 and ALFA starts as SGD with per-step
  per-layer rates alpha0 = ``inner.lr`` and no decay (beta0 = 1). The official
  code starts from a random linear output instead and writes the decay as
  ``(1 - beta0 * beta1) * theta`` with beta0 initialised to lr * 5e-4; we
  follow the paper's ``beta * theta``.
- the generator sees the same gradients the update uses: with second-order
  meta-gradients they stay differentiable (the official code detaches the
  generator's gradient input).

Because the generator's inputs are layer-wise means, the rule is a plain
function of (step, grads, params) and works unrolled (second order) and in
`tf.while_loop` (meta-test) alike.
"""

from typing import NamedTuple

import keras
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.meta import rules
from tfmetanas.models import params as params_lib


class ALFAState(NamedTuple):
    """The generated hyperparameters of every step so far (for summaries).

    Attributes:
      alpha: [num_steps, L] learning rates alpha_{l,j} (rows of later steps
        are zero until reached; steps beyond num_steps write the last row).
      beta: [num_steps, L] weight-decay factors beta_{l,j}.
    """

    alpha: tf.Tensor
    beta: tf.Tensor


def _safe_name(path):
    return path.replace("/", "__")


class ALFA(rules.UpdateRule):
    """ALFA's update rule: theta <- beta * theta - alpha * grad with generated alpha, beta.

    Args:
      paths: variable paths of the L adapted tensors (their order fixes the
        generator's input and output order).
      num_steps: inner steps with their own post-multipliers; later steps
        (e.g. more steps at meta-test) reuse the last one's.
      init_lr: initial alpha0 (``inner.lr``).
      layers: depth of g_phi (number of Dense layers, >= 1).
      init_beta: initial beta0 (1: no decay at initialisation).

    Returns (of `apply`): the updated fast weights and an `ALFAState`.

    References: Baik et al., arXiv:2011.00209, Section 3.2, Eq. (5)-(7).

    Example:
      rule = ALFA(fm.paths_of("weights"), num_steps=5, init_lr=0.01)
      learner = TaskLearner(fm, {"weights": rule}, 5)
    """

    def __init__(self, paths, num_steps, init_lr, layers=3, init_beta=1.0):
        self.paths = list(paths)
        if not self.paths:
            raise errors.ConfigError("ALFA needs at least one adapted tensor.")
        if int(layers) < 1:
            raise errors.ConfigError(f"inner.alfa.layers must be >= 1, got {layers}.")
        self.num_steps = int(num_steps)
        self.num_layers = int(layers)
        width = 2 * len(self.paths)
        floatx = keras.config.floatx()
        self.alpha0, self.beta0 = {}, {}
        for path in self.paths:
            name = _safe_name(path)
            self.alpha0[path] = params_lib.set_group(
                keras.Variable(tf.fill([self.num_steps], tf.cast(init_lr, floatx)),
                               name="alfa_alpha0__" + name),
                "meta",
            )
            self.beta0[path] = params_lib.set_group(
                keras.Variable(tf.fill([self.num_steps], tf.cast(init_beta, floatx)),
                               name="alfa_beta0__" + name),
                "meta",
            )
        glorot = keras.initializers.GlorotUniform()
        self.kernels, self.biases = [], []
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            # The last layer outputs exactly 1 at initialisation (zero kernel,
            # unit bias): ALFA starts as SGD with learned per-step rates.
            kernel = tf.zeros([width, width], floatx) if last else glorot([width, width], floatx)
            bias = tf.ones([width], floatx) if last else tf.zeros([width], floatx)
            self.kernels.append(
                params_lib.set_group(keras.Variable(kernel, name=f"alfa_generator_kernel{i}"), "meta")
            )
            self.biases.append(
                params_lib.set_group(keras.Variable(bias, name=f"alfa_generator_bias{i}"), "meta")
            )
        self.variables = (
            tuple(self.kernels) + tuple(self.biases)
            + tuple(self.alpha0.values()) + tuple(self.beta0.values())
        )

    @property
    def generator_variables(self):
        return tuple(self.kernels) + tuple(self.biases)

    def learning_state(self, grads, params):
        """tau: layer-wise means of the gradients, then of the weights ([2L])."""
        def mean(t):  # Over every axis, with one axes constant per rank.
            return tf.reduce_mean(t, axis=params_lib.shared_constant(list(range(t.shape.rank))))

        return tf.stack([mean(grads[p]) for p in self.paths]
                        + [mean(params[p]) for p in self.paths])

    def generate(self, tau):
        """g_phi(tau): the multipliers (alpha1, beta1), each [L]."""
        h = tau[None]
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
            h = tf.matmul(h, kernel.value) + bias.value
            if i < self.num_layers - 1:
                h = tf.nn.relu(h)
        alpha1, beta1 = tf.split(h[0], 2)
        return alpha1, beta1

    def _post(self, table, path, step):
        return params_lib.step_row(table[path].value, step, self.num_steps)

    def hyperparameters(self, step, grads, params):
        """(alpha, beta), each [L]: the generated rates and decays at `step`."""
        alpha1, beta1 = self.generate(self.learning_state(grads, params))
        alpha0 = tf.stack([self._post(self.alpha0, p, step) for p in self.paths])
        beta0 = tf.stack([self._post(self.beta0, p, step) for p in self.paths])
        return alpha0 * alpha1, beta0 * beta1

    def init(self, params):
        dtype = next(iter(params.values())).dtype if params else keras.config.floatx()
        zeros = tf.zeros([self.num_steps, len(self.paths)], dtype)
        return ALFAState(alpha=zeros, beta=zeros)

    def apply(self, step, grads, params, state):
        missing = [p for p in params if p not in self.alpha0]
        if missing:
            raise errors.ConfigError(f"ALFA has no hyperparameters for {missing}.")
        if set(params) != set(self.paths):
            raise errors.ConfigError(
                f"ALFA was built for {len(self.paths)} tensors but got {len(params)}: the "
                "generator needs the learning state of every tensor it was built for."
            )
        alpha, beta = self.hyperparameters(step, grads, params)
        new_params = {}
        # One unstack each, not a slice (and its constants) per tensor.
        for path, a, b in zip(self.paths, tf.unstack(alpha), tf.unstack(beta)):
            new_params[path] = b * params[path] - a * grads[path]
        # Record this step's row (one-hot blend: works for Python and tensor steps).
        row = params_lib.step_one_hot(step, self.num_steps, state.alpha.dtype)
        keep = params_lib.step_one_hot(step, self.num_steps, state.alpha.dtype, complement=True)
        state = ALFAState(
            alpha=state.alpha * keep + row * tf.cast(alpha, state.alpha.dtype)[None],
            beta=state.beta * keep + row * tf.cast(beta, state.beta.dtype)[None],
        )
        return new_params, state


def hyperparameter_trace(learner, task, group="weights", second_order=False):
    """The alpha/beta ALFA generates on one task, as summary scalars.

    Runs the task learner's inner loop on `task` (unrolled, `inner_steps`
    steps) and returns ``{"alfa/alpha/<path>/step_j": value, "alfa/beta/...": ...}``
    — for TensorBoard at logging time (the meta-step itself does not return
    rule states).

    Args:
      learner: a `TaskLearner` whose rule for `group` is `ALFA`.
      task: one task dict (support/query).
      group: the adapted group ALFA updates.
      second_order: passed to the inner steps (irrelevant for the values).

    Returns:
      A dict of scalar tensors.
    """
    rule = learner.rules[group]
    if not isinstance(rule, ALFA):
        raise errors.ConfigError(f"The rule of group {group!r} is not ALFA.")
    params = learner.initial_params()
    state = learner.fmodel.state()
    rule_states = {
        g: learner.rules[g].init({p: v for p, v in params.items() if learner.fmodel.group_of[p] == g})
        for g in learner.rules
    }
    steps = learner.inner_steps
    for step in range(steps):
        params, state, rule_states, _ = learner._step(  # noqa: SLF001 (same package)
            step, steps, params, state, rule_states, task, second_order, tuple(learner.rules)
        )
    trace = rule_states[group]
    out = {}
    for i, path in enumerate(rule.paths):
        for j in range(min(steps, rule.num_steps)):
            out[f"alfa/alpha/{path}/step_{j}"] = trace.alpha[j, i]
            out[f"alfa/beta/{path}/step_{j}"] = trace.beta[j, i]
    return out
