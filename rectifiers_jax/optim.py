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

import dataclasses
import functools
import math
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
    if style not in STYLES:
        raise ValueError(f"momentum style must be one of {STYLES}, got {style!r}")
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
    silently overwrite a manual value there).
    """
    value = float(value)
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


@dataclasses.dataclass
class PlateauTracker:
    """Decides when to drop the learning rate because the validation error plateaus.

    The paper switches 1e-2 -> 1e-3 -> 1e-4 "when the error plateaus" (Sec. 4) without a
    precise rule; ours: an evaluation improves when its error is below the best so far by more
    than `min_delta`; after `patience` evaluations in a row without improvement, `update`
    returns True (drop the rate by the config's `decay_factor`) and the count restarts. The
    best error is kept across drops. At most `max_drops` drops (None: no limit); the paper made 2.

    Units: `patience` in evaluations (not epochs); `min_delta` in the units of the errors
    passed to `update` (percent in this project, so 0.1 is 0.1 percentage points).
    """

    patience: int
    min_delta: float = 0.0
    max_drops: int | None = None
    best: float | None = None
    num_bad: int = 0
    num_drops: int = 0

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


# ----------------------------------------------------------------------------------------------
# Building from config.optim (a locked ConfigDict: fields exist and have their types)


def check_config(optim_config: Any) -> None:
    """One-line ValueError naming the first `config.optim` field out of its valid range."""
    c = optim_config
    rules = [
        ("schedule", c.schedule in SCHEDULES, f"one of {SCHEDULES}"),
        ("style", c.style in STYLES, f"one of {STYLES}"),
        ("learning_rate", math.isfinite(c.learning_rate) and c.learning_rate >= 0, "a number >= 0"),
        ("momentum", 0 <= c.momentum < 1, "in [0, 1)"),
        ("weight_decay", math.isfinite(c.weight_decay) and c.weight_decay >= 0, "a number >= 0"),
        ("decay_factor", 0 < c.decay_factor <= 1, "in (0, 1]"),
        (
            "warmup_epochs",
            c.warmup_epochs == 0 or (c.warmup_epochs > 0 and c.schedule != "plateau"),
            "0, or > 0 with schedule 'steps' or 'constant' (a plateau rate is set by hand)",
        ),
        ("plateau_patience", c.plateau_patience >= 1, "an integer >= 1"),
        ("plateau_min_delta", c.plateau_min_delta >= 0, "a number >= 0"),
        (
            "plateau_max_drops",
            c.plateau_max_drops is None or c.plateau_max_drops >= 0,
            "None or an integer >= 0",
        ),
    ]
    for field, valid, expected in rules:
        if not valid:
            raise ValueError(f"config.optim.{field}={c[field]!r} is not valid; use {expected}")


def schedule_boundaries(optim_config: Any, steps_per_epoch: float) -> tuple[int, ...]:
    """Step counts at which the "steps" schedule multiplies the rate by `decay_factor`.

    `boundaries_steps` (in steps) when non-empty, else `boundaries_epochs` (in epochs, may be
    fractional) times `steps_per_epoch`, rounded. The update with index b (0-based) is the first
    to use the lower rate, i.e. the first update of epoch `boundaries_epochs[i]` counted from 0.
    """
    if optim_config.boundaries_steps:
        field, raw = "boundaries_steps", tuple(optim_config.boundaries_steps)
        steps = tuple(int(b) for b in raw)
    else:
        field, raw = "boundaries_epochs", tuple(optim_config.boundaries_epochs)
        steps = tuple(int(round(float(e) * steps_per_epoch)) for e in raw)
    if any(s <= 0 for s in steps):
        raise ValueError(f"config.optim.{field} must be positive, got {raw}")
    if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(
            f"config.optim.{field} must be strictly increasing (in steps at {steps_per_epoch:g} "
            f"steps/epoch: {steps}), got {raw}"
        )
    return steps


def warmup_steps(optim_config: Any, steps_per_epoch: float) -> int:
    """Updates of the linear warm-up, `warmup_epochs * steps_per_epoch` rounded (0: none)."""
    return int(round(float(optim_config.warmup_epochs) * steps_per_epoch))


def make_schedule(optim_config: Any, steps_per_epoch: float) -> optax.Schedule:
    """Learning rate as a function of the update count, from `config.optim`.

    "steps": `learning_rate` times `decay_factor` per boundary passed (`schedule_boundaries`).
    "constant": `learning_rate`. "plateau": the initial `learning_rate` only; drops happen on the
    host (`PlateauTracker` + `set_learning_rate`), so read the live rate with
    `get_learning_rate`. With `warmup_epochs` (not the paper's; 0 by default) update k < W of
    the W warm-up updates uses (k + 1) / W of the rate.
    """
    check_config(optim_config)
    lr = float(optim_config.learning_rate)
    if optim_config.schedule == "steps":
        boundaries = schedule_boundaries(optim_config, steps_per_epoch)
        schedule = optax.piecewise_constant_schedule(
            lr, {b: float(optim_config.decay_factor) for b in boundaries}
        )
    else:
        schedule = optax.constant_schedule(lr)
    warmup = warmup_steps(optim_config, steps_per_epoch)
    if warmup == 0:
        return schedule
    return lambda count: schedule(count) * jnp.minimum(1.0, (count + 1) / warmup)


def make_optimizer(optim_config: Any, steps_per_epoch: float) -> optax.GradientTransformation:
    """The whole optimiser from `config.optim` (see configs/default.py for the fields).

    "steps" (and any warm-up) injects the schedule (rate read-only in the state); "constant"
    and "plateau" inject a plain rate that `set_learning_rate` can change between steps.
    """
    check_config(optim_config)
    learning_rate: float | optax.Schedule = float(optim_config.learning_rate)
    if optim_config.schedule == "steps" or warmup_steps(optim_config, steps_per_epoch):
        learning_rate = make_schedule(optim_config, steps_per_epoch)
    return momentum_sgd(
        learning_rate,
        momentum=float(optim_config.momentum),
        weight_decay=float(optim_config.weight_decay),
        style=optim_config.style,
        decay_biases=bool(optim_config.decay_biases),
    )


def make_plateau_tracker(optim_config: Any) -> PlateauTracker | None:
    """A `PlateauTracker` from `config.optim` when `schedule == "plateau"`, else None."""
    check_config(optim_config)
    if optim_config.schedule != "plateau":
        return None
    return PlateauTracker(
        patience=int(optim_config.plateau_patience),
        min_delta=float(optim_config.plateau_min_delta),
        max_drops=optim_config.plateau_max_drops,
    )
