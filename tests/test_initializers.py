"""He / Xavier / Glorot initialisers against their stated distributions (PAPER.md Sec. 2).

Each check draws a large sample with a fixed key and runs a Kolmogorov-Smirnov test against the
distribution the paper states, with the std computed here from hand-written fans:
conv kernel (3, 3, 64, 256): fan_in = 3*3*64 = 576, fan_out = 3*3*256 = 2304;
dense kernel (1024, 128): fan_in = 1024, fan_out = 128.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from rectifiers_jax import initializers

CONV = (3, 3, 64, 256)
DENSE = (1024, 128)
FANS = {CONV: (576, 2304), DENSE: (1024, 128)}
P_ACCEPT = 1e-3  # a correct sampler fails this KS test with probability 0.1% per (fixed) key
P_REJECT = 1e-6
TRUNCATED_UNIT_STD = 0.8796256610342398  # std of N(0, 1) truncated to [-2, 2]


def _draw(init, shape, seed: int, dtype=jnp.float32) -> np.ndarray:
    w = init(jax.random.key(seed), shape, dtype)
    assert w.shape == shape and w.dtype == dtype
    return np.asarray(w, np.float64).ravel()


def _ks_normal(w: np.ndarray, std: float) -> float:
    """p-value of the KS test of w against the untruncated N(0, std^2)."""
    return stats.kstest(w, stats.norm(loc=0.0, scale=std).cdf).pvalue


def _he_std(n: int, slope: float = 0.0, scale: float = 1.0) -> float:
    return math.sqrt(scale * 2.0 / ((1.0 + slope**2) * n))


# ---------------------------------------------------------------------------------------------
# He (untruncated Gaussian, Eqs. 10, 14, 15)


@pytest.mark.parametrize("shape", [CONV, DENSE], ids=["conv_hwio", "dense"])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("slope", [0.0, 0.25])
def test_he_normal_is_untruncated_gaussian_with_stated_std(shape, mode, slope):
    n = FANS[shape][0 if mode == "fan_in" else 1]
    seed = 1000 + 100 * (shape == CONV) + 10 * (mode == "fan_in") + int(slope > 0)
    w = _draw(initializers.he_normal(mode, slope=slope), shape, seed)
    assert _ks_normal(w, _he_std(n, slope)) > P_ACCEPT
    # power: the same samples are rejected against the other fan and (conv) against slope 0
    other_n = FANS[shape][1 if mode == "fan_in" else 0]
    assert _ks_normal(w, _he_std(other_n, slope)) < P_REJECT
    if slope and shape == CONV:
        assert _ks_normal(w, _he_std(n, 0.0)) < P_REJECT


def test_he_normal_scale_multiplies_variance():
    w = _draw(initializers.he_normal("fan_in", scale=3.0), CONV, 7)
    assert _ks_normal(w, _he_std(576, scale=3.0)) > P_ACCEPT
    assert np.var(w) == pytest.approx(3.0 * 2.0 / 576, rel=0.02)


def test_he_normal_keeps_requested_dtype():
    w = _draw(initializers.he_normal(), DENSE, 3, jnp.bfloat16)  # checks the dtype
    assert np.std(w) == pytest.approx(_he_std(1024), rel=0.02)


# ---------------------------------------------------------------------------------------------
# Truncated variant (JAX / Keras): rejected by the untruncated test, right variance and bound


def test_truncated_constant_is_the_truncated_normal_std():
    assert stats.truncnorm(-2.0, 2.0).std() == pytest.approx(TRUNCATED_UNIT_STD, rel=1e-12)


def test_he_normal_is_one_gaussian_draw_scaled_by_the_paper_std():
    """Eq. 10's untruncated Gaussian: the key's standard normal times sqrt(2 / n), n = 576."""
    key = jax.random.key(5)
    w = initializers.he_normal("fan_in")(key, CONV)
    np.testing.assert_array_equal(w, jax.random.normal(key, CONV) * np.float32(np.sqrt(2 / 576)))


@pytest.mark.parametrize(
    "init",
    [
        initializers.he_normal("fan_in", distribution="truncated_normal"),
        initializers.get("he_fan_in_truncated"),
    ],
    ids=["he_normal_truncated", "registry_he_fan_in_truncated"],
)
def test_truncated_variant_is_rejected_but_has_right_variance_and_bound(init):
    std = _he_std(576)
    w = _draw(init, CONV, 11)
    assert _ks_normal(w, std) < P_REJECT
    # it is the N(0, 1) truncated to +-2, rescaled to unit variance, times std
    truncated = stats.truncnorm(-2.0, 2.0, loc=0.0, scale=std / TRUNCATED_UNIT_STD)
    assert stats.kstest(w, truncated.cdf).pvalue > P_ACCEPT
    assert np.var(w) == pytest.approx(std**2, rel=0.015)
    bound = 2.0 * std / TRUNCATED_UNIT_STD
    assert np.max(np.abs(w)) <= bound * (1 + 1e-6)
    assert np.max(np.abs(w)) > 0.98 * bound  # the cut really is at 2 sigma of the unit normal


def test_untruncated_he_normal_exceeds_the_truncation_bound():
    """Guards the bound test above: untruncated samples do go past 2*std/0.8796."""
    std = _he_std(576)
    w = _draw(initializers.he_normal("fan_in"), CONV, 12)
    assert np.mean(np.abs(w) > 2.0 * std / TRUNCATED_UNIT_STD) > 0.01


# ---------------------------------------------------------------------------------------------
# Xavier, Glorot uniform, fixed normal


def test_xavier_is_gaussian_with_std_sqrt_one_over_fan_in():
    w = _draw(initializers.xavier_normal(), CONV, 21)
    assert _ks_normal(w, math.sqrt(1.0 / 576)) > P_ACCEPT
    assert _ks_normal(w, _he_std(576)) < P_REJECT
    w = _draw(initializers.xavier_normal(mode="fan_out"), DENSE, 22)
    assert _ks_normal(w, math.sqrt(1.0 / 128)) > P_ACCEPT


def test_glorot_uniform_is_uniform_with_variance_two_over_fan_sum():
    fan_in, fan_out = FANS[CONV]
    limit = math.sqrt(6.0 / (fan_in + fan_out))  # U(-L, L) has variance L^2 / 3
    w = _draw(initializers.glorot_uniform(), CONV, 31)
    assert stats.kstest(w, stats.uniform(loc=-limit, scale=2 * limit).cdf).pvalue > P_ACCEPT
    assert np.var(w) == pytest.approx(2.0 / (fan_in + fan_out), rel=0.02)
    assert np.max(np.abs(w)) <= limit * (1 + 1e-6)
    # not a Gaussian of the same variance
    assert _ks_normal(w, math.sqrt(2.0 / (fan_in + fan_out))) < P_REJECT


@pytest.mark.parametrize("std, scale", [(0.01, 1.0), (0.001, 1.0), (0.01, 4.0)])
def test_fixed_normal_std(std, scale):
    w = _draw(initializers.fixed_normal(std, scale=scale), DENSE, 41)
    expected = std * math.sqrt(scale)
    assert _ks_normal(w, expected) > P_ACCEPT
    assert np.std(w) == pytest.approx(expected, rel=0.01)


# ---------------------------------------------------------------------------------------------
# Registry

# name -> expected std for CONV at slope 0.25 (only the he_prelu forms use the slope, Eq. 15)
REGISTRY_STD = {
    "he_fan_in": math.sqrt(2.0 / 576),
    "he_fan_out": math.sqrt(2.0 / 2304),
    "he_prelu": math.sqrt(2.0 / (1.0625 * 576)),
    "he_prelu_fan_out": math.sqrt(2.0 / (1.0625 * 2304)),
    "he_fan_in_truncated": math.sqrt(2.0 / 576),
    "xavier": math.sqrt(1.0 / 576),
    "glorot_uniform": math.sqrt(2.0 / (576 + 2304)),
}


def test_registry_names():
    assert set(initializers.NAMES) == set(REGISTRY_STD)


@pytest.mark.parametrize("name", initializers.NAMES)
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_registry_std_and_scale(name, scale):
    w = _draw(initializers.get(name, scale=scale, slope=0.25), CONV, 51)
    # scale multiplies the variance; 2% on the variance is > 5 standard errors at 147k samples
    assert np.var(w) == pytest.approx(scale * REGISTRY_STD[name] ** 2, rel=0.02)
    assert abs(np.mean(w)) < 5 * REGISTRY_STD[name] * math.sqrt(scale / w.size)


def test_registry_he_prelu_without_slope_is_he_fan_in():
    w = _draw(initializers.get("he_prelu"), CONV, 52)
    assert np.var(w) == pytest.approx(2.0 / 576, rel=0.02)


@pytest.mark.parametrize(
    ("prelu", "relu"), [("he_prelu", "he_fan_in"), ("he_prelu_fan_out", "he_fan_out")]
)
def test_registry_he_prelu_forms_at_slope_zero_draw_the_relu_forms_exactly(prelu, relu):
    key = jax.random.key(53)
    a = initializers.get(prelu, slope=0.0)(key, CONV, jnp.float32)
    np.testing.assert_array_equal(a, initializers.get(relu)(key, CONV, jnp.float32))


def test_registry_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        initializers.get("kaiming")
    message = str(info.value)
    assert "kaiming" in message
    for name in initializers.NAMES:
        assert name in message


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_registry_rejects_non_positive_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        initializers.get("he_fan_in", scale=scale)


@pytest.mark.parametrize("name", initializers.NAMES)
@pytest.mark.parametrize("shape", [(100,), ()], ids=["1d", "0d"])
def test_registry_rejects_shape_without_fans(name, shape):
    with pytest.raises(ValueError) as info:
        initializers.get(name)(jax.random.key(0), shape, jnp.float32)
    message = str(info.value)
    assert str(shape) in message  # says what it got ...
    assert "HWIO" in message or "(in, out)" in message  # ... and what shape it needs


def test_variance_scaling_rejects_unknown_mode_and_distribution():
    with pytest.raises(ValueError, match="fan_avg"):
        initializers.variance_scaling(1.0, mode="fan_sideways")
    with pytest.raises(ValueError, match="truncated_normal"):
        initializers.variance_scaling(1.0, distribution="cauchy")


def test_compute_fans_hand_values():
    assert initializers.compute_fans(CONV) == (576, 2304)
    assert initializers.compute_fans(DENSE) == (1024, 128)
    assert initializers.compute_fans((7, 7, 3, 96)) == (147, 4704)
