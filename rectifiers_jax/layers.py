"""The layers of the paper's models: rectifiers (Sec. 2.1), spatial pyramid pooling (SPP-net),
and the conv / fc / pool layers with their response probes.

All layers take channels-last inputs (NHWC for images, [B, C] for dense activations).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from rectifiers_jax import initializers


def reduce_over_positions(x: jnp.ndarray, op: Literal["sum", "max"] = "sum") -> jnp.ndarray:
    """Sum (in float32) or max of x [..., W, C] over every axis but the channels: [C].

    Same values as reducing over axes (0, ..., ndim - 2), another lowering: XLA:CPU reduces
    rows of C = 64-256 floats ~5x slower than rows of W * C, so the batch and rows go first
    (whole examples stay on their device) and the W columns second; the barrier keeps XLA from
    merging the two reductions back into the slow one.
    """
    reduce = {"sum": functools.partial(jnp.sum, dtype=jnp.float32), "max": jnp.max}[op]
    if x.ndim < 3:
        return reduce(x.reshape(-1, x.shape[-1]), axis=0)
    width, channels = x.shape[-2:]
    partial = reduce(x.reshape(-1, width * channels), axis=0)
    return reduce(lax.optimization_barrier(partial).reshape(width, channels), axis=0)


@jax.custom_vjp
def add_bias(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    """y + bias, bias [C] broadcast over y [..., C]; dE/dbias by `reduce_over_positions`."""
    return y + bias


def _add_bias_fwd(y: jnp.ndarray, bias: jnp.ndarray):
    return y + bias, None


def _add_bias_bwd(_, g: jnp.ndarray):
    return g, reduce_over_positions(g).astype(g.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


@jax.custom_vjp
def prelu(y: jnp.ndarray, a: jnp.ndarray) -> jnp.ndarray:
    """f(y) = y if y > 0 else a * y (paper Eq. 1); `a` is a scalar or has y's last axis."""
    return jnp.where(y > 0, y, a * y)


def _prelu_fwd(y: jnp.ndarray, a: jnp.ndarray):
    return prelu(y, a), (y, a)


def _prelu_bwd(residuals, g: jnp.ndarray):
    y, a = residuals
    # dE/da (Eqs. 2, 3): the sum over positions of g * min(y, 0), per channel.
    da = reduce_over_positions(g * jnp.minimum(y, 0))
    da = da.sum() if a.ndim == 0 else da
    return jnp.where(y > 0, g, a * g), da.astype(a.dtype)


prelu.defvjp(_prelu_fwd, _prelu_bwd)


class PReLU(nn.Module):
    """Parametric ReLU, paper Eq. (1): f(y) = y if y > 0 else a * y.

    Attributes:
      shared: one scalar `a` for the layer (channel-shared) instead of one per channel
        (channel-wise, the last axis).
      a_init: initial slope; the paper uses 0.25 and never clips `a`.

    The parameter is named `a` (shape `()` shared, `(C,)` channel-wise) and stored as float32;
    the computation follows the input dtype. Using `y > 0` as the branch test makes the
    derivative at exactly 0 equal to `a`, as in PyTorch and Caffe, and gives
    dE/da = sum_{y <= 0} dE/df * y (paper Eq. 2), summed over channels when shared (Eq. 3).
    """

    shared: bool = False
    a_init: float = 0.25

    @nn.compact
    def __call__(self, y: jnp.ndarray) -> jnp.ndarray:
        if y.ndim < 1:
            raise ValueError(
                f"PReLU needs an input of rank >= 1 with channels last, got shape {y.shape}"
            )
        shape = () if self.shared else (y.shape[-1],)
        a = self.param("a", nn.initializers.constant(self.a_init), shape, jnp.float32)
        return prelu(y, a.astype(y.dtype))


class LeakyReLU(nn.Module):
    """Leaky ReLU: PReLU with a fixed slope and no parameters (Maas et al. use 0.01)."""

    slope: float = 0.01

    @nn.compact
    def __call__(self, y: jnp.ndarray) -> jnp.ndarray:
        return jnp.where(y > 0, y, jnp.asarray(self.slope, y.dtype) * y)


class ReLU(nn.Module):
    """max(0, y) as a module, so every activation slot of a model is a named submodule."""

    @nn.compact
    def __call__(self, y: jnp.ndarray) -> jnp.ndarray:
        return nn.relu(y)


ACTIVATIONS = ("relu", "lrelu", "prelu", "prelu_shared")
PRELU_ACTIVATIONS = ("prelu", "prelu_shared")


def make_activation(
    kind: str, *, lrelu_slope: float = 0.01, a_init: float = 0.25, name: str | None = None
) -> nn.Module:
    """The activation module named by `kind` (one of `ACTIVATIONS`); PReLU's parameter is `a`."""
    if kind == "relu":
        return ReLU(name=name)
    if kind == "lrelu":
        return LeakyReLU(slope=lrelu_slope, name=name)
    if kind in PRELU_ACTIVATIONS:
        return PReLU(shared=kind == "prelu_shared", a_init=a_init, name=name)
    raise ValueError(f"unknown activation {kind!r}; valid: {', '.join(ACTIVATIONS)}")


def initial_slope(activation: str, *, lrelu_slope: float = 0.01, a_init: float = 0.25) -> float:
    """Negative slope of an activation at initialisation (the `a` of paper Eq. 15)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    return {"relu": 0.0, "lrelu": lrelu_slope}.get(activation, a_init)


SppBins = Literal["spp_net", "adaptive"]


def spp_bin_edges(size: int, bins: int, mode: SppBins = "spp_net") -> list[tuple[int, int]]:
    """Half-open [start, end) pixel ranges of `bins` pooling bins along one axis of length `size`.

    `spp_net`: window ceil(size/n), stride floor(size/n), as in SPP-net (He et al. 2014) and the
    paper; for some sizes (e.g. 14 with n = 3) its last bin stops short of the edge.
    `adaptive`: bin i covers [floor(i*size/n), ceil((i+1)*size/n)), so every position is
    pooled; it equals `spp_net` whenever n divides the size (e.g. net14's 18x18 map).
    """
    if size < bins:
        raise ValueError(f"an SPP level of {bins} bins needs at least {bins} positions, got {size}")
    if mode == "spp_net":
        window, stride = math.ceil(size / bins), size // bins
        return [(i * stride, min(i * stride + window, size)) for i in range(bins)]
    if mode == "adaptive":
        return [((i * size) // bins, math.ceil((i + 1) * size / bins)) for i in range(bins)]
    raise ValueError(f"unknown SPP bin mode {mode!r}; valid: 'spp_net', 'adaptive'")


def tiled_max_pool(x: jnp.ndarray, window: int | tuple[int, int]) -> jnp.ndarray:
    """Unpadded max pool, NHWC, whose stride equals its window (int, or (rows, cols)).

    A reshape and a max: the values equal `nn.max_pool`'s; the gradient splits ties evenly among
    a tile's maxima instead of sending it to the first one. XLA:CPU expands the gradient of a
    strided max pool (select-and-scatter) into iotas, an argmax reduce-window and a scatter
    (about 20% of net14's train step at batch 32); this one is element-wise.
    """
    win_rows, win_cols = (window, window) if isinstance(window, int) else window
    batch, height, width, channels = x.shape
    rows, cols = height // win_rows, width // win_cols
    tiles = x[:, : rows * win_rows, : cols * win_cols].reshape(
        batch, rows, win_rows, cols, win_cols, channels
    )
    return tiles.max(axis=(2, 4))


class SpatialPyramidPooling(nn.Module):
    """Max-pooled spatial pyramid (SPP-net): fixed-length features from any map size.

    Input `[B, H, W, C]` with H, W >= max(levels); output `[B, sum(n*n for n in levels) * C]`,
    level by level, each level's `n x n` bins in row-major order with channels innermost.
    """

    levels: Sequence[int] = (6, 3, 2, 1)
    bins: SppBins = "spp_net"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if x.ndim != 4:
            raise ValueError(f"SpatialPyramidPooling needs [B, H, W, C] input, got shape {x.shape}")
        height, width = x.shape[1], x.shape[2]
        largest = max(self.levels)
        if min(height, width) < largest:
            raise ValueError(
                f"SPP level {largest} needs a feature map of at least {largest}x{largest}, "
                f"got {height}x{width}"
            )
        pooled = []
        for n in self.levels:
            if height % n == 0 and width % n == 0:
                # The bins tile the map (in both bin modes): one max per tile. The sliced form
                # below is ~17 more XLA:CPU kernels to compile per level, forward and gradient.
                grid = tiled_max_pool(x, (height // n, width // n))
                pooled.append(grid.reshape(x.shape[0], -1))
                continue
            # Separable max: reduce row bins, then column bins; exact for rectangular bins.
            rows = jnp.stack(
                [x[:, a:b].max(axis=1) for a, b in spp_bin_edges(height, n, self.bins)], axis=1
            )
            grid = jnp.stack(
                [rows[:, :, a:b].max(axis=2) for a, b in spp_bin_edges(width, n, self.bins)], axis=2
            )
            pooled.append(grid.reshape(x.shape[0], -1))
        return jnp.concatenate(pooled, axis=-1)


def symmetric_padding(padding: int | str) -> Any:
    """`k` -> ((k, k), (k, k)) for lax/flax; a string such as "SAME" passes through."""
    return padding if isinstance(padding, str) else ((padding, padding), (padding, padding))


class Layer(nn.Module):
    """Shared part of conv and fc layers: kernel init, bias, response probes, activation.

    Attributes:
      features: output channels.
      kernel_init: initializer of the kernel.
      activation: "relu", "lrelu", "prelu", "prelu_shared", or None (the logits layer).
      probe_gradients: add the zero perturbation whose gradient is dE/dy_l (analysis only).
    """

    features: int
    kernel_init: initializers.Initializer
    activation: str | None = None
    lrelu_slope: float = 0.01
    a_init: float = 0.25
    probe_gradients: bool = False

    def respond(self, y: jnp.ndarray) -> jnp.ndarray:
        bias = self.param("bias", nn.initializers.zeros, (y.shape[-1],), jnp.float32)
        y = add_bias(y, bias.astype(y.dtype))
        if self.activation is None:
            return y
        # The probes let analysis read Var[y_l] (Eq. 9) and dE/dy_l (Eq. 13) without changing
        # the forward pass; sow stores only when `intermediates` is mutable.
        if self.probe_gradients:
            y = self.perturb("response", y)
        self.sow("intermediates", "response", y)
        act = make_activation(
            self.activation, lrelu_slope=self.lrelu_slope, a_init=self.a_init, name="act"
        )
        return act(y)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _pad_then_conv(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, pad: int) -> jnp.ndarray:
    """A conv padded by `pad` >= k - 1 pixels, as an explicit pad and a VALID conv.

    Same maths as the conv's own padding, another lowering: XLA:CPU's kernel gradient of a conv
    padded by >= k - 1 pixels (net14's 2x2 convs with pad 1) is ~15x slower than that of a
    VALID conv on the padded input (4.6 s against 0.3 s for a 35x35x128 map, batch 32).
    Smaller pads (3x3 pad 1, 7x7 pad 3) lower well as they are.
    """
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    return lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", dimension_numbers=_NHWC)


@jax.custom_vjp
def full_conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Stride-1 conv of x [B, H, W, C] zero-padded by k - 1 pixels per side: [B, H+k-1, W+k-1, O].

    net14's 2x2 pad-1 convs. Both gradients are VALID convs of the output gradient, so neither
    pads or crops: wrt x with the flipped kernel (autodiff pads to H+k and crops, ~20% slower on
    XLA:CPU), wrt the kernel with x as the window (~10% faster than on the padded x).
    """
    return _pad_then_conv(x, kernel, 1, kernel.shape[0] - 1)


def _full_conv_fwd(x: jnp.ndarray, kernel: jnp.ndarray):
    return full_conv(x, kernel), (x, kernel)


def _full_conv_bwd(residuals, g: jnp.ndarray):
    x, kernel = residuals
    flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
    dx = lax.conv_general_dilated(g, flipped, (1, 1), "VALID", dimension_numbers=_NHWC)
    # dE/dw[a, b] = sum over n, i, j of x[n, i, j] g[n, i + k-1-a, j + k-1-b]: the k x k VALID
    # correlation of g with x, batch and feature roles swapped ([O, k, k, I]), read backwards.
    correlation = lax.conv_general_dilated(
        g, x, (1, 1), "VALID", dimension_numbers=("CHWN", "IHWO", "NHWC")
    )
    return dx, jnp.flip(correlation, (1, 2)).transpose(1, 2, 3, 0)


full_conv.defvjp(_full_conv_fwd, _full_conv_bwd)


class ConvLayer(Layer):
    """k x k convolution (HWIO kernel named `kernel`) + bias + activation, NHWC."""

    kernel_size: int = 3
    stride: int = 1
    padding: int | str = 0

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        k = self.kernel_size
        kernel = self.param(
            "kernel", self.kernel_init, (k, k, x.shape[-1], self.features), jnp.float32
        ).astype(x.dtype)
        if isinstance(self.padding, str) or self.padding < k - 1 or k == 1:
            y = lax.conv_general_dilated(
                x,
                kernel,
                (self.stride, self.stride),
                symmetric_padding(self.padding),
                dimension_numbers=_NHWC,
            )
        elif self.padding == k - 1 and self.stride == 1:
            y = full_conv(x, kernel)
        else:
            y = _pad_then_conv(x, kernel, self.stride, self.padding)
        return self.respond(y)


class DenseLayer(Layer):
    """Fully connected layer ((in, out) kernel named `kernel`) + bias + optional activation."""

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        return self.respond(x @ kernel.astype(x.dtype))


class PoolLayer(nn.Module):
    """Max or average pooling over `window x window` with the given stride, NHWC.

    Unpadded max pools whose windows tile the map (stride = window, as in every model here) run
    as `tiled_max_pool`.
    """

    window: int
    stride: int
    padding: int | str
    kind: str = "max"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if self.kind == "max" and self.window == self.stride and self.padding == 0:
            return tiled_max_pool(x, self.window)
        pool = {"max": nn.max_pool, "avg": nn.avg_pool}[self.kind]
        return pool(x, (self.window,) * 2, (self.stride,) * 2, symmetric_padding(self.padding))
