"""PReLU, LeakyReLU, spatial pyramid pooling and max pooling against references written here.

References (PAPER.md Sec. 1 and 3): f(y) = y if y > 0 else a*y; df/dy = 1 if y > 0 else a (so
the derivative at exactly 0 is `a`); dE/da = sum over y <= 0 of dE/df * y, also summed over
channels when `a` is channel-shared. SPP-net bins: window ceil(size/n), stride floor(size/n),
bin i = [i*stride, i*stride + window); "adaptive" bins: [floor(i*size/n), ceil((i+1)*size/n)).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rectifiers_jax.layers import (
    LeakyReLU,
    PoolLayer,
    PReLU,
    ReLU,
    SpatialPyramidPooling,
    add_bias,
    reduce_over_positions,
    spp_bin_edges,
    tiled_max_pool,
)

CHANNELS = 8
MODES = ("spp_net", "adaptive")
SHAPES = [(CHANNELS,), (4, CHANNELS), (2, 3, CHANNELS), (2, 3, 5, CHANNELS)]  # ranks 1..4


def _input(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Standard normal float32 values with exact zeros at every 5th position (all channels)."""
    y = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    y.reshape(-1)[::5] = 0.0
    return y


def prelu_reference(y: np.ndarray, a) -> np.ndarray:
    y = y.astype(np.float64)
    return np.where(y > 0, y, np.asarray(a, np.float64) * y)


def prelu_grads_reference(y: np.ndarray, a, g: np.ndarray, shared: bool):
    """(dE/dy, dE/da) for upstream gradient g = dE/df."""
    y, g, a = y.astype(np.float64), g.astype(np.float64), np.asarray(a, np.float64)
    dy = g * np.where(y > 0, 1.0, a)
    per_position = np.where(y <= 0, g * y, 0.0)
    if shared:
        return dy, per_position.sum()
    return dy, per_position.reshape(-1, y.shape[-1]).sum(axis=0)


@jax.jit
def _prelu_both(a_wise, a_shared, y, g):
    """{mode: (output, dE/da, dE/dy)} of channel-wise and channel-shared PReLU for dE/df = g.

    One jitted function for both modes, so each input shape compiles once."""
    results = {}
    for mode, module, a in (("wise", PReLU(), a_wise), ("shared", PReLU(shared=True), a_shared)):
        out, vjp = jax.vjp(lambda a, y, m=module: m.apply({"params": {"a": a}}, y), a, y)
        da, dy = vjp(g)
        results[mode] = (out, da, dy)
    return results


def _prelu_forward_and_grads(shared: bool, a, y, g):
    a_wise = np.full(y.shape[-1], 0.25, np.float32) if shared else a
    a_shared = a if shared else np.float32(0.25)
    return _prelu_both(a_wise, a_shared, y, g)["shared" if shared else "wise"]


# ---------------------------------------------------------------------------------------------
# PReLU


@pytest.mark.parametrize("shared", [False, True], ids=["channel_wise", "channel_shared"])
def test_prelu_param_is_a_with_paper_shape_dtype_and_initial_value(shared):
    expected_shape = () if shared else (CHANNELS,)
    for shape in SHAPES:  # ranks 1..4: shapes only (no compute)
        abstract = jax.eval_shape(PReLU(shared=shared).init, jax.random.key(0), jnp.zeros(shape))
        assert jax.tree.map(lambda v: (v.shape, v.dtype), abstract) == {
            "params": {"a": (expected_shape, jnp.float32)}
        }
    variables = PReLU(shared=shared).init(jax.random.key(0), jnp.asarray(_input((2, CHANNELS), 0)))
    a = variables["params"]["a"]
    assert a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.full(expected_shape, 0.25, np.float32))


def test_prelu_a_init_option():
    y = jnp.asarray(_input((2, 3, CHANNELS), 1))
    a = PReLU(a_init=0.1).init(jax.random.key(0), y)["params"]["a"]
    np.testing.assert_array_equal(np.asarray(a), np.full((CHANNELS,), 0.1, np.float32))
    # The initial slope is what the layer applies.
    out = PReLU(a_init=0.1).apply({"params": {"a": a}}, y)
    np.testing.assert_allclose(np.asarray(out), prelu_reference(np.asarray(y), 0.1), rtol=1e-6)


@pytest.mark.parametrize("shared", [False, True], ids=["channel_wise", "channel_shared"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"rank{len(s)}")
def test_prelu_forward_and_gradients_match_numpy(shape, shared):
    rng = np.random.default_rng(len(shape) + 10 * shared)
    y = _input(shape, len(shape))
    g = rng.standard_normal(shape).astype(np.float32)
    # Slopes are not clipped: include negative ones and ones above 1.
    a = np.float32(-0.37) if shared else rng.uniform(-0.5, 1.5, CHANNELS).astype(np.float32)
    out, da, dy = _prelu_forward_and_grads(shared, a, y, g)

    ref_dy, ref_da = prelu_grads_reference(y, a, g, shared)
    np.testing.assert_allclose(np.asarray(out), prelu_reference(y, a), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(dy), ref_dy, rtol=1e-6, atol=1e-7)
    assert da.shape == np.shape(ref_da) and da.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(da), ref_da, rtol=1e-5, atol=1e-5)

    # At exactly y = 0 the derivative is a (the y > 0 convention of PyTorch and Caffe).
    zeros = y == 0
    assert zeros.any()
    a_full = np.broadcast_to(a, shape)
    np.testing.assert_allclose(np.asarray(dy)[zeros], (g * a_full)[zeros], rtol=1e-6)


def test_prelu_shared_gradient_is_sum_over_channels_of_channel_wise():
    shape = (2, 3, 5, CHANNELS)
    y, g = _input(shape, 3), np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    a = np.float32(0.25)
    _, da_shared, _ = _prelu_forward_and_grads(True, a, y, g)
    _, da_wise, _ = _prelu_forward_and_grads(False, np.full(CHANNELS, a), y, g)
    # Independent NumPy value of the shared gradient (Eq. 3) ...
    np.testing.assert_allclose(float(da_shared), np.sum(np.where(y <= 0, g * y, 0.0)), rtol=1e-5)
    # ... and it is the channel-wise gradient (Eq. 2) summed over channels.
    np.testing.assert_allclose(float(da_shared), float(np.sum(da_wise)), rtol=1e-5)


@pytest.mark.parametrize("shared", [False, True], ids=["channel_wise", "channel_shared"])
def test_prelu_bfloat16_input(shared):
    shape = (2, 3, 5, CHANNELS)
    y32 = _input(shape, 5)
    y = jnp.asarray(y32, jnp.bfloat16)
    variables = PReLU(shared=shared).init(jax.random.key(0), y)
    assert variables["params"]["a"].dtype == jnp.float32
    a = np.float32(0.3) if shared else np.linspace(-0.2, 1.2, CHANNELS, dtype=np.float32)
    g = jnp.asarray(np.random.default_rng(6).standard_normal(shape), jnp.bfloat16)
    out, da, _ = _prelu_forward_and_grads(shared, a, y, g)
    assert out.dtype == jnp.bfloat16
    assert da.dtype == jnp.float32  # the parameter and its gradient stay float32
    # float32 reference on the bf16-rounded input; bf16 keeps 8 significant bits.
    ref = prelu_reference(np.asarray(y, np.float32), a)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=1e-2, atol=1e-3)
    y_ref, g_ref = np.asarray(y, np.float64), np.asarray(g, np.float64)
    _, ref_da = prelu_grads_reference(y_ref, a, g_ref, shared)
    # dE/da sums bf16 products: allow 1% of the summed magnitudes (cancellation is expected).
    magnitude = np.abs(np.where(y_ref <= 0, g_ref * y_ref, 0.0))
    magnitude = magnitude.sum() if shared else magnitude.reshape(-1, CHANNELS).sum(axis=0)
    assert np.all(np.abs(np.asarray(da) - ref_da) <= 1e-2 * magnitude + 1e-3)


def test_prelu_rejects_scalar_input():
    with pytest.raises(ValueError, match="rank"):
        PReLU().init(jax.random.key(0), jnp.float32(1.0))


# ---------------------------------------------------------------------------------------------
# Reductions over positions (bias and dE/da gradients, dead units)


@pytest.mark.parametrize("shape", [*SHAPES, (3, 35, 35, 16), (2, 17, 6, 256)], ids=str)
def test_reduce_over_positions_matches_numpy(shape):
    """Sums (float32, also of bfloat16 input) and maxima over every axis but the channels."""
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    axes = tuple(range(x.ndim - 1))
    total = reduce_over_positions(jnp.asarray(x))
    assert total.shape == (shape[-1],) and total.dtype == jnp.float32
    np.testing.assert_allclose(total, x.astype(np.float64).sum(axes), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(reduce_over_positions(jnp.asarray(x), "max"), x.max(axes))
    low = jnp.asarray(x, jnp.bfloat16)
    reference = np.asarray(low.astype(jnp.float32), np.float64).sum(axes)
    np.testing.assert_allclose(reduce_over_positions(low), reference, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: f"rank{len(s)}")
def test_bias_gradient_is_the_sum_of_the_output_gradient_over_positions(shape):
    rng = np.random.default_rng(7)
    y, g = rng.standard_normal((2, *shape)).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32)
    out, vjp = jax.vjp(add_bias, jnp.asarray(y), jnp.asarray(bias))
    np.testing.assert_allclose(out, y + bias, rtol=1e-6)
    dy, dbias = vjp(jnp.asarray(g))
    np.testing.assert_array_equal(dy, g)
    axes = tuple(range(len(shape) - 1))
    np.testing.assert_allclose(dbias, g.astype(np.float64).sum(axes), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# LeakyReLU and ReLU


def test_leaky_relu_has_no_params_and_default_slope_001():
    y = _input((2, 3, 5, CHANNELS), 7)
    variables = LeakyReLU().init(jax.random.key(0), jnp.asarray(y))
    assert jax.tree.leaves(variables) == []
    out = LeakyReLU().apply({}, jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(out), np.where(y > 0, y, 0.01 * y), rtol=1e-6)
    # Negative inputs really are scaled (not zeroed as by ReLU).
    assert np.all(np.asarray(out)[y < 0] < 0)


@pytest.mark.parametrize("slope", [0.25, -0.5, 2.0])
def test_leaky_relu_applies_given_slope(slope):
    y = _input((4, CHANNELS), 8)
    out = LeakyReLU(slope=slope).apply({}, jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(out), np.where(y > 0, y, slope * y), rtol=1e-6)
    out16 = LeakyReLU(slope=slope).apply({}, jnp.asarray(y, jnp.bfloat16))
    assert out16.dtype == jnp.bfloat16


def test_relu_module():
    y = _input((4, CHANNELS), 9)
    assert jax.tree.leaves(ReLU().init(jax.random.key(0), jnp.asarray(y))) == []
    np.testing.assert_array_equal(np.asarray(ReLU().apply({}, jnp.asarray(y))), np.maximum(y, 0))


# ---------------------------------------------------------------------------------------------
# Spatial pyramid pooling


def edges_reference(size: int, n: int, mode: str) -> list[tuple[int, int]]:
    if mode == "spp_net":
        window, stride = -(-size // n), size // n
        return [(i * stride, i * stride + window) for i in range(n)]
    assert mode == "adaptive"
    return [((i * size) // n, -(-((i + 1) * size) // n)) for i in range(n)]


def spp_reference(x: np.ndarray, levels, mode: str) -> np.ndarray:
    """Level by level, bins row-major, channels innermost: [B, sum(n*n) * C]."""
    _, height, width, _ = x.shape
    features = []
    for n in levels:
        for r0, r1 in edges_reference(height, n, mode):
            for c0, c1 in edges_reference(width, n, mode):
                # every bin is non-empty and inside the map (NumPy would clip silently)
                assert 0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width
                features.append(x[:, r0:r1, c0:c1, :].max(axis=(1, 2)))
    return np.concatenate(features, axis=-1)


@functools.cache
def _spp_jit(levels: tuple[int, ...]):
    """Both bin modes in one jitted function (one compile per map shape)."""

    def both(x):
        return {mode: SpatialPyramidPooling(levels, mode).apply({}, x) for mode in MODES}

    return jax.jit(both)


def _spp(levels, mode, x):
    return _spp_jit(tuple(levels))(x)[mode]


@pytest.mark.parametrize(
    "size, n, mode, expected",
    [
        (13, 3, "spp_net", [(0, 5), (4, 9), (8, 13)]),
        (14, 3, "spp_net", [(0, 5), (4, 9), (8, 13)]),  # last bin stops short of the edge
        (14, 3, "adaptive", [(0, 5), (4, 10), (9, 14)]),
        (7, 6, "spp_net", [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)]),
        (18, 6, "spp_net", [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15), (15, 18)]),
        (18, 6, "adaptive", [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15), (15, 18)]),
        (6, 6, "spp_net", [(i, i + 1) for i in range(6)]),
        (5, 1, "spp_net", [(0, 5)]),
    ],
)
def test_spp_bin_edges_hand_values(size, n, mode, expected):
    assert spp_bin_edges(size, n, mode) == expected
    assert edges_reference(size, n, mode) == expected


def test_spp_bin_edges_errors():
    with pytest.raises(ValueError, match="6"):
        spp_bin_edges(5, 6)
    with pytest.raises(ValueError, match="adaptive"):
        spp_bin_edges(10, 2, "bogus")


@pytest.mark.parametrize("mode", ["spp_net", "adaptive"])
@pytest.mark.parametrize(
    "levels, height, width",
    [
        ((6, 3, 2, 1), 6, 6),
        ((6, 3, 2, 1), 7, 7),
        ((6, 3, 2, 1), 13, 13),
        ((6, 3, 2, 1), 14, 14),
        ((6, 3, 2, 1), 18, 18),
        ((6, 3, 2, 1), 13, 18),
        ((7, 3, 2, 1), 14, 14),
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v),
)
def test_spp_matches_numpy_reference(levels, height, width, mode):
    channels = 3
    x = np.random.default_rng(height * 100 + width).standard_normal((2, height, width, channels))
    x = x.astype(np.float32)
    out = _spp(levels, mode, jnp.asarray(x))
    assert out.shape == (2, sum(n * n for n in levels) * channels)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), spp_reference(x, levels, mode))


def test_spp_modes_differ_exactly_when_bins_do_not_divide_the_map():
    """Guards the reference test's power: the two bin rules are distinguishable."""
    x = np.random.default_rng(0).standard_normal((2, 14, 14, 3)).astype(np.float32)
    a = spp_reference(x, (6, 3, 2, 1), "spp_net")
    b = spp_reference(x, (6, 3, 2, 1), "adaptive")
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(_spp((6, 3, 2, 1), "spp_net", jnp.asarray(x))), a)
    x = np.random.default_rng(1).standard_normal((2, 18, 18, 3)).astype(np.float32)
    np.testing.assert_array_equal(
        spp_reference(x, (6, 3, 2, 1), "spp_net"), spp_reference(x, (6, 3, 2, 1), "adaptive")
    )


def test_spp_output_layout_level_bin_channel():
    """A map whose values encode position: level by level, bins row-major, channels innermost."""
    side = 18  # level-6 bins are 3x3 blocks
    position = np.arange(side * side, dtype=np.float32).reshape(side, side)
    x = np.stack([position, -position, np.full_like(position, 7.0)], axis=-1)
    x = np.broadcast_to(x, (2, side, side, 3))
    out = np.asarray(_spp((6, 3, 2, 1), "spp_net", jnp.asarray(x)))[0]
    assert out.shape == (50 * 3,)
    np.testing.assert_array_equal(out[:3], [2 * side + 2, 0, 7])  # level 6, bin (0, 0)
    np.testing.assert_array_equal(out[3:6], [2 * side + 5, -3, 7])  # level 6, bin (0, 1)
    np.testing.assert_array_equal(out[18:21], [5 * side + 2, -3 * side, 7])  # level 6, bin (1, 0)
    np.testing.assert_array_equal(out[108:111], [5 * side + 5, 0, 7])  # level 3, bin (0, 0)
    np.testing.assert_array_equal(out[-3:], [side * side - 1, 0, 7])  # level 1: global max


@pytest.mark.parametrize("height, width", [(5, 5), (5, 12), (12, 5)])
def test_spp_too_small_map_raises_clear_error(height, width):
    x = jnp.zeros((1, height, width, 2))
    with pytest.raises(ValueError) as info:
        SpatialPyramidPooling((6, 3, 2, 1)).apply({}, x)
    message = str(info.value)
    assert "6x6" in message and f"{height}x{width}" in message


def test_spp_rejects_non_image_input():
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        SpatialPyramidPooling().apply({}, jnp.zeros((6, 6, 2)))


def test_spp_bfloat16_input():
    x32 = np.random.default_rng(2).standard_normal((2, 13, 18, 3)).astype(np.float32)
    x = jnp.asarray(x32, jnp.bfloat16)
    out = _spp((6, 3, 2, 1), "spp_net", x)
    assert out.dtype == jnp.bfloat16
    # max is exact: equal to the reference on the same (bf16-representable) values
    ref = spp_reference(np.asarray(x, np.float32), (6, 3, 2, 1), "spp_net")
    np.testing.assert_array_equal(np.asarray(out, np.float32), ref)


# ----------------------------------------------------------------------------------------------
# Max pooling with tiling windows


@pytest.mark.parametrize("height, width, window", [(109, 109, 3), (36, 35, 2), (7, 9, 3)])
def test_tiled_max_pool_matches_flax_max_pool_values_and_untied_gradients(height, width, window):
    # distinct values: no ties, so the gradients agree exactly too
    x = jnp.asarray(
        np.random.default_rng(0).permutation(2 * height * width * 3).reshape(2, height, width, 3),
        jnp.float32,
    )
    ours = tiled_max_pool(x, window)
    flax_pool = nn.max_pool(x, (window, window), (window, window), "VALID")
    np.testing.assert_array_equal(ours, flax_pool)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(ours.shape), jnp.float32)
    grad = jax.vjp(lambda x: tiled_max_pool(x, window), x)[1](g)[0]
    grad_flax = jax.vjp(lambda x: nn.max_pool(x, (window,) * 2, (window,) * 2, "VALID"), x)[1](g)
    np.testing.assert_array_equal(grad, grad_flax[0])


def test_tiled_max_pool_splits_a_tied_gradient_evenly():
    x = jnp.zeros((1, 2, 2, 1)).at[0, 1, 1, 0].set(-1.0)  # three tied maxima of 0
    grad = jax.grad(lambda x: tiled_max_pool(x, 2).sum())(x)
    np.testing.assert_allclose(grad[0, :, :, 0], [[1 / 3, 1 / 3], [1 / 3, 0]])


@pytest.mark.parametrize("window, stride, padding", [(2, 2, 0), (3, 3, 0), (3, 2, 0), (3, 3, 1)])
def test_pool_layer_equals_flax_max_pool(window, stride, padding):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 11, 10, 4)), jnp.float32)
    ours = PoolLayer(window, stride, padding).apply({}, x)
    pad = ((padding, padding), (padding, padding))
    np.testing.assert_array_equal(ours, nn.max_pool(x, (window,) * 2, (stride,) * 2, pad))
