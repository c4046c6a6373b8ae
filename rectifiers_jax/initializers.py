"""Weight initialisers of He et al. 2015, Sec. 2.2, and the Xavier/Glorot baselines.

Kernels are laid out HWIO (conv) or `(in, out)` (dense), so for a kernel of shape
`(k, k, c_in, c_out)` the fan-in is n = k*k*c_in and the fan-out is n_hat = k*k*c_out.

Each public factory returns a JAX initializer `(key, shape, dtype) -> array`. The registry
(`get`, `NAMES`) lets configs name a scheme (`init="he_fan_out"`) and turn one global variance
`scale`, the knob that init-variance sweeps explore (a per-layer factor beta compounds to
beta^L through depth, Sec. 2.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp

Initializer = Callable[[jax.Array, Sequence[int], jnp.dtype], jax.Array]
FanMode = Literal["fan_in", "fan_out", "fan_avg"]
Distribution = Literal["normal", "truncated_normal", "uniform"]

DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")
FAN_MODES = ("fan_in", "fan_out", "fan_avg")


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of an HWIO or (in, out) kernel: receptive field times channels."""
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError(
            f"a kernel initializer needs a shape of rank >= 2 (HWIO conv kernel or (in, out) "
            f"dense kernel), got shape {shape}"
        )
    receptive = math.prod(shape[:-2])
    return receptive * shape[-2], receptive * shape[-1]


def variance_scaling(
    gain: float, mode: FanMode = "fan_in", distribution: Distribution = "normal"
) -> Initializer:
    """Var[w] = gain / n, with n the fan-in, fan-out or their average.

    The draw is `jax.nn.initializers.variance_scaling` (input axis -2, output axis -1, as HWIO
    and (in, out) kernels are laid out); its "normal" is untruncated and its
    "truncated_normal" is cut at +-2 sigma and rescaled to the requested variance.
    """
    if mode not in FAN_MODES:
        raise ValueError(f"unknown fan mode {mode!r}; valid: {', '.join(FAN_MODES)}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}"
        )
    draw = jax.nn.initializers.variance_scaling(gain, mode, distribution, in_axis=-2, out_axis=-1)

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        compute_fans(shape)  # the one-line error for a shape without in and out axes
        return draw(key, tuple(shape), dtype)

    return init


def he_normal(
    mode: FanMode = "fan_in",
    slope: float = 0.0,
    scale: float = 1.0,
    distribution: Distribution = "normal",
) -> Initializer:
    """He initialisation: std = sqrt(scale * 2 / ((1 + slope^2) * n)).

    `mode="fan_in"` is the forward condition, Eq. (10); `"fan_out"` the backward one, Eq. (14),
    used for the large models A/B/C. `slope` is the PReLU slope at init, Eq. (15) (0 = ReLU).
    `distribution="normal"` is untruncated (the paper, Caffe's MSRAFiller, PyTorch's
    kaiming_normal_); `"truncated_normal"` is JAX's and Keras's ±2σ form at the same variance.
    """
    return variance_scaling(scale * 2.0 / (1.0 + slope**2), mode, distribution)


def xavier_normal(scale: float = 1.0, mode: FanMode = "fan_in") -> Initializer:
    """The paper's "Xavier" baseline: n * Var[w] = 1 (fan-in), zero-mean Gaussian."""
    return variance_scaling(scale, mode, "normal")


def glorot_uniform(scale: float = 1.0) -> Initializer:
    """Glorot & Bengio's own form: Var[w] = 2 / (fan_in + fan_out), drawn uniformly."""
    return variance_scaling(scale, "fan_avg", "uniform")


def fixed_normal(std: float, scale: float = 1.0) -> Initializer:
    """Zero-mean Gaussian with a fixed std (the paper's large-model fc layers: 0.01, 0.001)."""

    return jax.nn.initializers.normal(std * math.sqrt(scale))


# name -> factory(scale, slope) -> Initializer. `slope` is the activation's initial negative
# slope; only `he_prelu` (Eq. 15) and `he_prelu_fan_out` (Eq. 15's backward form,
# 1/2 (1 + a^2) n_hat Var[w] = 1, as Eq. 14 is Eq. 10's) use it. With slope 0 (ReLU) they draw
# exactly what `he_fan_in` and `he_fan_out` draw.
_REGISTRY: dict[str, Callable[[float, float], Initializer]] = {
    "he_fan_in": lambda scale, slope: he_normal("fan_in", 0.0, scale),
    "he_fan_out": lambda scale, slope: he_normal("fan_out", 0.0, scale),
    "he_prelu": lambda scale, slope: he_normal("fan_in", slope, scale),
    "he_prelu_fan_out": lambda scale, slope: he_normal("fan_out", slope, scale),
    "he_fan_in_truncated": lambda scale, slope: he_normal("fan_in", 0.0, scale, "truncated_normal"),
    "xavier": lambda scale, slope: xavier_normal(scale),
    "glorot_uniform": lambda scale, slope: glorot_uniform(scale),
}
NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get(name: str, *, scale: float = 1.0, slope: float = 0.0) -> Initializer:
    """Initializer by registry name, with its variance multiplied by `scale`.

    `slope` is the activation's initial negative slope (0.25 for PReLU), used by `he_prelu` and
    `he_prelu_fan_out`.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown initializer {name!r}; valid: {', '.join(NAMES)}")
    if not scale > 0:
        raise ValueError(f"initializer variance scale must be > 0, got {scale}")
    return _REGISTRY[name](scale, slope)
