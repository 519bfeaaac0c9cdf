"""Inner-loop update rules, in the spirit of optax.

An update rule adapts a dict of parameter tensors (``{path: tensor}``, the
*fast weights*) without touching variables:

    state = rule.init(params)
    params, state = rule.apply(step, grads, params, state)

`step` is the inner-step index (a Python int when the inner loop is unrolled,
a scalar int tensor inside `tf.while_loop`). Rules are pure functions of their
arguments and of their own meta-parameters: a rule with learned
hyperparameters (LSLR, ALFA) owns Keras variables in the ``meta`` group
(`rule.variables`), which an outer tape differentiates through because `apply`
reads them.

References: Adam, arXiv:1412.6980; LSLR (MAML++), arXiv:1810.09502.
"""

from typing import NamedTuple

import keras
import tensorflow as tf

from tfmetanas import errors
from tfmetanas.models import params as params_lib


def _as_schedule(lr):
    """A learning rate: a float, or a callable ``step -> float``."""
    return lr if callable(lr) else (lambda step: lr)


FLAT = "__flat__"  # The one key of a packed parameter dict (`models.params.Packing`).


class UpdateRule:
    """Base class: `init`, `apply` and the rule's own meta-variables.

    ``elementwise`` rules treat every element of every tensor alike (SGD,
    Adam): `tfmetanas.meta.inner` runs them on all of a group's parameters
    packed into one vector (``{FLAT: vector}``), the same numbers with far
    fewer graph nodes. Per-tensor rules (LSLR, ALFA) are not.
    """

    variables = ()
    elementwise = False

    def init(self, params):
        del params
        return ()

    def apply(self, step, grads, params, state):
        raise NotImplementedError  # abstract interface


def _map_dict_fields(state, fn):
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*[fn(f) if isinstance(f, dict) and f else f for f in state])
    return state


def pack_state(state, layout):
    """An element-wise rule's state with its per-tensor dicts packed by `layout`.

    `layout` is the `Packing` of the group's parameters; the state's fields
    that are ``{path: tensor}`` dicts (moments) become ``{FLAT: vector}``,
    scalars (Adam's count) stay.
    """
    return _map_dict_fields(state, lambda d: {FLAT: layout.pack(d)})


def unpack_state(state, layout):
    """The inverse of `pack_state`."""
    return _map_dict_fields(state, lambda d: layout.unpack(d[FLAT]))


class SGDState(NamedTuple):
    momentum: dict


class SGD(UpdateRule):
    """theta <- theta - lr * (g + wd * theta), optionally with heavy-ball momentum.

    Example:
      rule = SGD(0.4)
      fast_weights, state = rule.apply(0, grads, fast_weights, rule.init(fast_weights))
    """

    elementwise = True

    def __init__(self, learning_rate, momentum=0.0, weight_decay=0.0, nesterov=False):
        self.learning_rate = _as_schedule(learning_rate)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)

    def init(self, params):
        if not self.momentum:
            return SGDState(momentum={})
        return SGDState(momentum={p: tf.zeros_like(v) for p, v in params.items()})

    def apply(self, step, grads, params, state):
        lr = self.learning_rate(step)
        new_params, new_momentum = {}, {}
        for path, value in params.items():
            g = grads[path]
            if self.weight_decay:
                g = g + self.weight_decay * value
            if self.momentum:
                buf = self.momentum * state.momentum[path] + g
                new_momentum[path] = buf
                g = g + self.momentum * buf if self.nesterov else buf
            new_params[path] = value - lr * g
        return new_params, SGDState(momentum=new_momentum)


class AdamState(NamedTuple):
    count: tf.Tensor
    mu: dict
    nu: dict


class Adam(UpdateRule):
    """Adam with L2 weight decay added to the gradient (PyTorch `Adam(weight_decay=)`).

    METANAS and Reptile use ``beta1 = 0`` for the inner loop.
    """

    elementwise = True

    def __init__(self, learning_rate, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.0):
        self.learning_rate = _as_schedule(learning_rate)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.epsilon = float(epsilon)
        self.weight_decay = float(weight_decay)

    def init(self, params):
        return AdamState(
            count=tf.zeros([], next(iter(params.values())).dtype if params else tf.float32),
            mu={p: tf.zeros_like(v) for p, v in params.items()},
            nu={p: tf.zeros_like(v) for p, v in params.items()},
        )

    def apply(self, step, grads, params, state):
        lr = self.learning_rate(step)
        count = state.count + 1.0
        bc1 = 1.0 - tf.pow(self.beta1, count)
        bc2 = 1.0 - tf.pow(self.beta2, count)
        new_params, mu, nu = {}, {}, {}
        for path, value in params.items():
            g = grads[path]
            if self.weight_decay:
                g = g + self.weight_decay * value
            mu[path] = self.beta1 * state.mu[path] + (1.0 - self.beta1) * g
            nu[path] = self.beta2 * state.nu[path] + (1.0 - self.beta2) * tf.square(g)
            m_hat = mu[path] / bc1 if self.beta1 else mu[path]
            v_hat = nu[path] / bc2
            new_params[path] = value - lr * m_hat / (tf.sqrt(v_hat) + self.epsilon)
        return new_params, AdamState(count=count, mu=mu, nu=nu)


def _safe_name(path):
    return path.replace("/", "__")


class LSLR(UpdateRule):
    """Learned per-layer per-step learning rates (MAML++ "LSLR").

    One learned rate per adapted tensor and inner step, initialised from
    `init_lr` (the MAML++ reference code ignores its configured value and
    always starts at 0.1; we read the config). The rates are ``meta``
    parameters: learned by the outer loop only.

    Args:
      paths: the variable paths of the adapted tensors.
      num_steps: inner steps (training); a later step (e.g. at meta-test with
        more steps) reuses the last step's rate.
      init_lr: initial value of every rate.
    """

    def __init__(self, paths, num_steps, init_lr):
        self.paths = list(paths)
        self.num_steps = int(num_steps)
        self.rates = {}
        for path in self.paths:
            v = keras.Variable(
                tf.fill([self.num_steps], tf.cast(init_lr, keras.config.floatx())),
                name="lslr__" + _safe_name(path),
            )
            self.rates[path] = params_lib.set_group(v, "meta")
        self.variables = tuple(self.rates.values())

    def rate(self, path, step):
        return params_lib.step_row(self.rates[path].value, step, self.num_steps)

    def apply(self, step, grads, params, state):
        new_params = {}
        for path, value in params.items():
            if path not in self.rates:
                raise errors.ConfigError(f"LSLR has no learning rate for {path!r}.")
            new_params[path] = value - self.rate(path, step) * grads[path]
        return new_params, state


def reptile_interpolation(meta_params, task_params, step_size):
    """Reptile's step on values: theta + eps * (mean_task(theta_task) - theta).

    Args:
      meta_params: ``{path: tensor}`` of the meta-parameters.
      task_params: a list of ``{path: tensor}``, one per task, adapted.
      step_size: the meta step size eps (float or scalar tensor).

    Returns:
      The interpolated ``{path: tensor}``.

    References: Nichol et al., arXiv:1803.02999, Algorithm 2.
    """
    return {
        p: v + step_size * (tf.add_n([t[p] for t in task_params]) / len(task_params) - v)
        for p, v in meta_params.items()
    }
