"""The paper's optimiser: momentum SGD with weight decay, and its learning-rate schedules.

He et al. 2015, Sec. 4 (training recipe): momentum 0.9, weight decay 5e-4 on every weight
except the PReLU slopes `a`, learning rate 1e-2 -> 1e-3 -> 1e-4 switched "when the error
plateaus". Sec. 2.1: `a` is updated with momentum at the same learning rate as the weights
and gets no weight decay, because decay would pull it toward 0, i.e. toward ReLU.

Two momentum forms are offered (`style`):
  * "caffe" (the paper's, trained in Caffe): the learning rate sits inside the velocity,
    v <- mu * v + lr * (g + wd * w);  w <- w - v.
  * "optax" (optax `sgd`, PyTorch): m <- mu * m + (g + wd * w);  w <- w - lr * m.
They agree while the rate is constant and differ after a rate drop: in Caffe form the old,
larger steps already in v decay away at rate mu; in optax form the whole accumulated m is
rescaled by the new rate at once (mu = 0.9, g = 1, lr 0.1 for 3 steps then 0.01: w = -0.8149
vs -0.59539 after step 4).

Every optimiser here is built through `optax.inject_hyperparams`, so the learning rate lives in
the optimiser state: `get_learning_rate(opt_state)` reads it for logging whatever the schedule,
and `set_learning_rate(opt_state, value)` changes it between jitted steps without recompiling
(the plateau schedule, driven on the host by `PlateauTracker`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

STYLES = ("caffe", "optax")
SCHEDULES = ("steps", "plateau", "constant")

# Leaf names that never get weight decay: the PReLU slopes (paper Sec. 2.1). Decided by name, not
# rank: a channel-shared `a` is a scalar and a channel-wise `a` has the rank of a bias.
NO_DECAY_NAMES = frozenset({"a"})
BIAS_NAMES = frozenset({"bias"})

# optax >= 0.1.9 builds this state for `inject_hyperparams` (checked in the installed 0.2.8).
_INJECT_STATE = optax.InjectStatefulHyperparamsState


# ----------------------------------------------------------------------------------------------
# Weight-decay mask


def _leaf_name(path: tuple[Any, ...]) -> str:
    """Name of a leaf: the last key of its key path ('' for a bare array)."""
    if not path:
        return ""
    key = path[-1]
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def weight_decay_mask(params: Any, decay_biases: bool = True) -> Any:
    """Tree of bools like `params`: True where weight decay applies.

    False for every leaf named `a` (PReLU slopes, paper Sec. 2.1) and, when `decay_biases` is
    False, for every leaf named `bias`. Works on arrays or `jax.ShapeDtypeStruct` leaves.
    """

    def decays(path: tuple[Any, ...], _: Any) -> bool:
        name = _leaf_name(path)
        if name in NO_DECAY_NAMES:
            return False
        return decay_biases or name not in BIAS_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


# ----------------------------------------------------------------------------------------------
# Momentum SGD


def _momentum_sgd_chain(
    learning_rate: jax.Array,
    momentum: jax.Array,
    weight_decay: jax.Array,
    style: str,
    decay_biases: bool,
) -> optax.GradientTransformation:
    """The un-injected chain; hyperparameters arrive as arrays from `inject_hyperparams`."""
    decay = optax.add_decayed_weights(
        weight_decay, mask=functools.partial(weight_decay_mask, decay_biases=decay_biases)
    )
    if style == "caffe":
        # Caffe's SGDSolver: history = momentum * history + local_rate * (diff + decay * w);
        # w -= history. The trace therefore holds +v, Caffe's velocity, in parameter units.
        return optax.chain(
            decay,
            optax.scale_by_learning_rate(learning_rate, flip_sign=False),
            optax.trace(decay=momentum),
            optax.scale(-1.0),
        )
    # optax.sgd(momentum) with coupled (L2) decay: the trace holds gradients, scaled afterwards.
    return optax.chain(
        decay,
        optax.trace(decay=momentum),
        optax.scale_by_learning_rate(learning_rate),
    )


def _check_style(style: str, field: str = "style") -> None:
    if style not in STYLES:
        raise ValueError(f"{field} must be one of {STYLES}, got {style!r}")


def momentum_sgd(
    learning_rate: float | optax.Schedule,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    style: str = "caffe",
    decay_biases: bool = True,
) -> optax.GradientTransformation:
    """Momentum SGD with weight decay on everything except leaves named `a`.

    Args:
      learning_rate: rate per step, a float or an optax schedule (step count -> rate).
      momentum: mu in [0, 1); the paper uses 0.9.
      weight_decay: L2 coefficient added to the gradient (g + wd * w); the paper uses 5e-4.
      style: "caffe" (v = mu v + lr (g + wd w); w -= v; the paper) or "optax"
        (m = mu m + g + wd w; w -= lr m).
      decay_biases: whether leaves named `bias` get weight decay (Caffe's default does).

    Returns:
      An `optax.GradientTransformation` (built with `optax.inject_hyperparams`, so
      `get_learning_rate` / `set_learning_rate` work on its state). `update` needs `params`.
    """
    _check_style(style)
    if not callable(learning_rate):
        _check_nonnegative(learning_rate, "learning_rate")
    _check_momentum(momentum, "momentum")
    _check_nonnegative(weight_decay, "weight_decay")
    # float32 hyperparameters whatever the parameter dtype: a bf16 learning rate would be coarse.
    return optax.inject_hyperparams(
        _momentum_sgd_chain, static_args=("style", "decay_biases"), hyperparam_dtype=jnp.float32
    )(
        learning_rate=learning_rate,
        momentum=momentum,
        weight_decay=weight_decay,
        style=style,
        decay_biases=bool(decay_biases),
    )


# ----------------------------------------------------------------------------------------------
# Learning rate in the optimiser state


def _is_inject_state(x: Any) -> bool:
    return isinstance(x, _INJECT_STATE)


def _lr_states(opt_state: Any) -> list[Any]:
    leaves = jax.tree_util.tree_leaves(opt_state, is_leaf=_is_inject_state)
    return [s for s in leaves if _is_inject_state(s) and "learning_rate" in s.hyperparams]


def _single_lr_state(opt_state: Any) -> Any:
    states = _lr_states(opt_state)
    if len(states) != 1:
        raise ValueError(
            f"expected one inject_hyperparams state with a learning_rate in opt_state, found "
            f"{len(states)}; build the optimiser with momentum_sgd or make_optimizer"
        )
    return states[0]


def get_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate in `opt_state`, as a float32 array.

    With a schedule it is the rate used by the latest update (the schedule's first value right
    after `init`); with a constant or plateau rate it is the rate the next update will use.
    """
    return _single_lr_state(opt_state).hyperparams["learning_rate"]


def set_learning_rate(opt_state: Any, value: float) -> Any:
    """`opt_state` with the learning rate replaced by `value` (host side, no recompilation).

    The new rate keeps the old one's dtype, shape and sharding, so a jitted step taking the
    state does not retrace. Raises ValueError when the rate follows a schedule (optax would
    silently overwrite a manual value there) or when `value` is negative or not finite.
    """
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"learning_rate must be a finite number >= 0, got {value}")
    target = _single_lr_state(opt_state)
    if "learning_rate" in target.hyperparams_states:
        raise ValueError(
            "learning_rate follows a schedule in this optimiser and cannot be set by hand; "
            "use schedule='constant' or 'plateau' (config.optim.schedule)"
        )
    old = target.hyperparams["learning_rate"]
    if isinstance(old, jax.core.Tracer):
        new = jnp.full(old.shape, value, old.dtype)
    elif isinstance(old, jax.Array):
        new = jax.device_put(np.full(old.shape, value, old.dtype), old.sharding)
    else:  # e.g. a numpy array restored from a checkpoint
        new = np.full(np.shape(old), value, np.asarray(old).dtype)

    def replace(x: Any) -> Any:
        if x is target:
            return x._replace(hyperparams={**x.hyperparams, "learning_rate": new})
        return x

    return jax.tree_util.tree_map(replace, opt_state, is_leaf=_is_inject_state)


# ----------------------------------------------------------------------------------------------
# Plateau schedule (host side)


class PlateauTracker:
    """Decides when to drop the learning rate because the validation error plateaus.

    The paper switches 1e-2 -> 1e-3 -> 1e-4 "when the error plateaus" (Sec. 4) without a
    precise rule; ours: an evaluation improves when its error is below the best so far by more
    than `min_delta`; after `patience` evaluations in a row without improvement, `update`
    returns True (drop the rate by `factor`) and the count restarts. The best error is kept
    across drops. At most `max_drops` drops (None: no limit); the paper made 2.

    Units: `patience` in evaluations (not epochs); `min_delta` in the units of the errors
    passed to `update` (percent in this project, so 0.1 is 0.1 percentage points).
    """

    def __init__(
        self,
        patience: int,
        min_delta: float = 0.0,
        factor: float = 0.1,
        max_drops: int | None = None,
    ) -> None:
        def is_int(x: Any) -> bool:
            return _is_scalar_number(x) and math.isfinite(float(x)) and float(x) == int(x)

        if not is_int(patience) or patience < 1:
            raise ValueError(f"plateau patience must be an integer >= 1, got {patience!r}")
        if not _is_scalar_number(min_delta) or not float(min_delta) >= 0:
            raise ValueError(f"plateau min_delta must be a number >= 0, got {min_delta!r}")
        if not _is_scalar_number(factor) or not 0 < float(factor) <= 1:
            raise ValueError(f"plateau factor must be in (0, 1], got {factor!r}")
        if max_drops is not None and (not is_int(max_drops) or max_drops < 0):
            raise ValueError(
                f"plateau max_drops must be None or an integer >= 0, got {max_drops!r}"
            )
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.factor = float(factor)
        self.max_drops = None if max_drops is None else int(max_drops)
        self.best: float | None = None
        self.num_bad = 0
        self.num_drops = 0

    @classmethod
    def from_config(cls, optim_config: Any) -> PlateauTracker:
        """From `config.optim`: plateau_patience, plateau_min_delta, decay_factor and
        plateau_max_drops (whatever `schedule` says)."""
        return _plateau_tracker_from_config(optim_config)

    def update(self, eval_error: float) -> bool:
        """Record one evaluation's error; True when the learning rate should drop now."""
        error = float(eval_error)
        # A NaN error never counts as an improvement.
        if math.isfinite(error) and (self.best is None or error < self.best - self.min_delta):
            self.best = error
            self.num_bad = 0
            return False
        self.num_bad += 1
        if self.num_bad < self.patience:
            return False
        self.num_bad = 0
        if self.max_drops is not None and self.num_drops >= self.max_drops:
            return False
        self.num_drops += 1
        return True

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (plain Python numbers) for checkpoints."""
        return {"best": self.best, "num_bad": self.num_bad, "num_drops": self.num_drops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (values may come back as numpy scalars)."""
        best = state["best"]
        self.best = None if best is None or (np.ndim(best) == 0 and np.isnan(best)) else float(best)
        self.num_bad = int(state["num_bad"])
        self.num_drops = int(state["num_drops"])


def maybe_drop_learning_rate(
    opt_state: Any, tracker: PlateauTracker, eval_error: float
) -> tuple[Any, bool]:
    """Feed `eval_error` to `tracker`; on a plateau multiply the state's rate by its factor.

    Returns (opt_state, dropped).
    """
    if not tracker.update(eval_error):
        return opt_state, False
    new_rate = float(get_learning_rate(opt_state)) * tracker.factor
    return set_learning_rate(opt_state, new_rate), True


# ----------------------------------------------------------------------------------------------
# Building from config.optim


def _field(config: Any, name: str, default: Any = ...) -> Any:
    value = config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)
    if value is ...:
        raise ValueError(f"config.optim.{name} is missing")
    return value


def _is_scalar_number(value: Any) -> bool:
    """A Python/numpy/JAX real scalar (0-d), not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, float, np.number)):
        return True
    return (
        isinstance(value, (np.ndarray, jax.Array))
        and value.ndim == 0
        and jnp.issubdtype(value.dtype, jnp.number)
    )


def _check_nonnegative(value: Any, field: str) -> None:
    if not _is_scalar_number(value) or not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"{field} must be a finite number >= 0, got {value!r}")


def _check_momentum(value: Any, field: str) -> None:
    if not _is_scalar_number(value) or not 0 <= float(value) < 1:
        raise ValueError(f"{field} must be a number in [0, 1), got {value!r}")


def _check_schedule_name(optim_config: Any) -> str:
    schedule = _field(optim_config, "schedule")
    if schedule not in SCHEDULES:
        raise ValueError(f"config.optim.schedule must be one of {SCHEDULES}, got {schedule!r}")
    return schedule


def schedule_boundaries(optim_config: Any, steps_per_epoch: int) -> tuple[int, ...]:
    """Step counts at which the "steps" schedule multiplies the rate by `decay_factor`.

    `boundaries_steps` (in steps) when non-empty, else `boundaries_epochs` (in epochs, may be
    fractional) times `steps_per_epoch`, rounded. The update with index b (0-based) is the first
    to use the lower rate, i.e. the first update of epoch `boundaries_epochs[i]` counted from 0.
    """
    if isinstance(steps_per_epoch, bool) or int(steps_per_epoch) != steps_per_epoch:
        raise ValueError(f"steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be an integer >= 1, got {steps_per_epoch!r}")
    in_steps = tuple(_field(optim_config, "boundaries_steps", ()) or ())
    if in_steps:
        field, raw = "boundaries_steps", in_steps
        if any(isinstance(b, bool) or int(b) != b for b in raw):
            raise ValueError(f"config.optim.boundaries_steps must be integers, got {raw}")
        steps = tuple(int(b) for b in raw)
    else:
        field, raw = "boundaries_epochs", tuple(_field(optim_config, "boundaries_epochs", ()) or ())
        steps = tuple(int(round(float(e) * steps_per_epoch)) for e in raw)
    if any(s <= 0 for s in steps):
        raise ValueError(f"config.optim.{field} must be positive, got {raw}")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(
            f"config.optim.{field} must be strictly increasing (in steps at {steps_per_epoch} "
            f"steps/epoch: {steps}), got {raw}"
        )
    return steps


def _base_learning_rate(optim_config: Any) -> float:
    lr = _field(optim_config, "learning_rate")
    _check_nonnegative(lr, "config.optim.learning_rate")
    return float(lr)


def _decay_factor(optim_config: Any) -> float:
    factor = _field(optim_config, "decay_factor", 0.1)
    if not _is_scalar_number(factor) or not 0 < float(factor) <= 1:
        raise ValueError(f"config.optim.decay_factor must be in (0, 1], got {factor!r}")
    return float(factor)


def make_schedule(optim_config: Any, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate as a function of the update count, from `config.optim`.

    "steps": `learning_rate` times `decay_factor` per boundary passed (`schedule_boundaries`).
    "constant": `learning_rate`. "plateau": the initial `learning_rate` only; drops happen on the
    host (`PlateauTracker` + `set_learning_rate`), so read the live rate with
    `get_learning_rate`.
    """
    schedule = _check_schedule_name(optim_config)
    lr = _base_learning_rate(optim_config)
    if schedule == "steps":
        factor = _decay_factor(optim_config)
        boundaries = schedule_boundaries(optim_config, steps_per_epoch)
        return optax.piecewise_constant_schedule(lr, {b: factor for b in boundaries})
    return optax.constant_schedule(lr)


def make_optimizer(optim_config: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """The whole optimiser from `config.optim` (see configs/default.py for the fields).

    "steps" injects the schedule (rate read-only in the state); "constant" and "plateau" inject
    a plain rate that `set_learning_rate` can change between steps.
    """
    schedule = _check_schedule_name(optim_config)
    style = _field(optim_config, "style")
    _check_style(style, "config.optim.style")
    momentum = _field(optim_config, "momentum")
    _check_momentum(momentum, "config.optim.momentum")
    weight_decay = _field(optim_config, "weight_decay")
    _check_nonnegative(weight_decay, "config.optim.weight_decay")
    decay_biases = _field(optim_config, "decay_biases", True)
    if not isinstance(decay_biases, (bool, np.bool_)):
        raise ValueError(f"config.optim.decay_biases must be True or False, got {decay_biases!r}")
    learning_rate: float | Callable[[Any], Any]
    if schedule == "steps":
        learning_rate = make_schedule(optim_config, steps_per_epoch)
    else:
        learning_rate = _base_learning_rate(optim_config)
        if schedule == "plateau":
            make_plateau_tracker(optim_config)  # validate the plateau fields up front
    return momentum_sgd(
        learning_rate,
        momentum=float(momentum),
        weight_decay=float(weight_decay),
        style=style,
        decay_biases=bool(decay_biases),
    )


def make_plateau_tracker(optim_config: Any) -> PlateauTracker | None:
    """A `PlateauTracker` from `config.optim` when `schedule == "plateau"`, else None."""
    if _check_schedule_name(optim_config) != "plateau":
        return None
    return _plateau_tracker_from_config(optim_config)


def _plateau_tracker_from_config(optim_config: Any) -> PlateauTracker:
    fields = {
        "patience": "plateau_patience",
        "min_delta": "plateau_min_delta",
        "max_drops": "plateau_max_drops",
    }
    values = {
        "patience": _field(optim_config, "plateau_patience"),
        "min_delta": _field(optim_config, "plateau_min_delta", 0.0),
        "factor": _decay_factor(optim_config),
        "max_drops": _field(optim_config, "plateau_max_drops", None),
    }
    try:
        return PlateauTracker(**values)
    except ValueError as error:
        # Re-raise naming the config field rather than the constructor argument.
        message = str(error)
        for arg, field in fields.items():
            message = message.replace(f"plateau {arg}", f"config.optim.{field}")
        raise ValueError(message) from None
