"""The paper's models: parameter counts, layer names, depth, initialisation, forward pass, errors.

Reference numbers come from the paper (PAPER.md): net14 has 74,993,896 parameters with ReLU
(Table 1 arithmetic, "about 75 M", checked below from the hand table), PReLU adds 10,304
channel-wise and 13 channel-shared (Secs. 1, 3, 7); model depths (weight layers) are 14, 30, 19,
22, 22. Other counts are recomputed here from hand-written layer tables (Tables 1 and 3), never
from the library's own bookkeeping. Full-size models are only
traced (`jax.eval_shape`); real compute uses a width-0.25 net14 with 10 classes.
"""

from __future__ import annotations

import functools
import math
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from support import hand_layers

from rectifiers_jax import initializers, layers, models

NET14_RELU_PARAMS = 74_993_896
DEPTH = {"net14": 14, "net30": 30, "model_a": 19, "model_b": 22, "model_c": 22}
# Smallest square input whose last conv map fits the largest SPP level, derived by hand:
# net14: final map = pool2 side p >= 6 -> conv2 side >= 12 -> pool1 input >= 36 -> image >= 77;
# model_a: final = floor(c/8) >= 7 for the conv1 map c = (s - 1) // 2 + 1 -> c >= 56 -> s >= 111.
MIN_IMAGE = {"net14": 77, "model_a": 111}


def paper_layers(name: str) -> list[tuple[str, int, int, int]]:
    """Weight layers (name, k, c_in, c_out) of the full-width 1000-class models; fc: k = 1."""
    return [(layer, k, c_in, c_out) for layer, k, c_in, c_out, _ in hand_layers(name)]


@functools.cache
def _traced(name: str, activation: str = "relu") -> tuple[jax.ShapeDtypeStruct, dict]:
    """Shapes of (logits, variables) of a full-size model on two 224x224 images, traced only;
    `variables["intermediates"]` holds every layer's output (capture_intermediates)."""
    model = models.build(name, activation=activation)
    x = jnp.zeros((2, 224, 224, 3))
    return jax.eval_shape(
        lambda key: model.init_with_output(key, x, capture_intermediates=True), jax.random.key(0)
    )


def _abstract_params(name: str, activation: str = "relu") -> dict:
    return _traced(name, activation)[1]["params"]


def _stage_sizes(name: str) -> dict[str, tuple[int, ...]]:
    captured = _traced(name)[1]["intermediates"]
    return {
        layer: out["__call__"][0].shape[1:]
        for layer, out in captured.items()
        if isinstance(out, dict) and "__call__" in out
    }


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# Parameter counts, names, depth (full size, shapes only)


def test_hand_table_reproduces_the_paper_count():
    rows = paper_layers("net14")
    assert sum(k * k * c_in * c_out + c_out for _, k, c_in, c_out in rows) == NET14_RELU_PARAMS
    assert sum(c_out for _, _, _, c_out in rows[:-1]) == 10_304


@pytest.mark.parametrize(
    "activation, extra", [("relu", 0), ("lrelu", 0), ("prelu", 10_304), ("prelu_shared", 13)]
)
def test_net14_parameter_count(activation, extra):
    assert _count(_abstract_params("net14", activation=activation)) == NET14_RELU_PARAMS + extra


@pytest.mark.parametrize("name", models.NAMES)
def test_parameter_counts_against_hand_tables(name):
    rows = paper_layers(name)
    relu = _count(_abstract_params(name))
    assert relu == sum(k * k * c_in * c_out + c_out for _, k, c_in, c_out in rows)
    # PReLU follows every weight layer except fc3: one `a` per channel, or one per layer
    activated = rows[:-1]
    wise = _count(_abstract_params(name, activation="prelu"))
    assert wise - relu == sum(c_out for _, _, _, c_out in activated)
    shared = _count(_abstract_params(name, activation="prelu_shared"))
    assert shared - relu == len(activated) == DEPTH[name] - 1


def test_models_names():
    assert set(models.NAMES) == set(DEPTH)


@pytest.mark.parametrize("name", models.NAMES)
def test_layer_names_shapes_and_depth(name):
    params = _abstract_params(name, activation="prelu")
    rows = paper_layers(name)
    assert set(params) == {row[0] for row in rows}  # nothing else has params
    assert len(params) == DEPTH[name]
    for layer, k, c_in, c_out in rows:
        kernel = params[layer]["kernel"]
        assert kernel.shape == ((k, k, c_in, c_out) if layer.startswith("conv") else (c_in, c_out))
        assert params[layer]["bias"].shape == (c_out,)
        assert kernel.dtype == jnp.float32
        if layer != "fc3":
            assert params[layer]["act"]["a"].shape == (c_out,)
    assert "act" not in params["fc3"]
    assert models.activated_layers(models.build(name)) == [row[0] for row in rows[:-1]]


def test_net14_and_net30_layer_names_exactly():
    net14 = ["conv1", *(f"conv2_{i}" for i in range(1, 5)), *(f"conv3_{i}" for i in range(1, 7))]
    assert set(_abstract_params("net14")) == {*net14, "fc1", "fc2", "fc3"}
    # depth order
    assert models.activated_layers(models.build("net14")) == [*net14, "fc1", "fc2"]
    net30 = models.activated_layers(models.build("net30"))
    assert net30 == [*net14, *(f"conv3_{i}" for i in range(7, 23)), "fc1", "fc2"]
    assert sum(n.startswith("conv") for n in _abstract_params("net30")) == 27


@pytest.mark.parametrize("name", models.NAMES)
@pytest.mark.parametrize("activation", layers.ACTIVATIONS)
def test_build_every_model_and_activation(name, activation):
    assert isinstance(models.build(name, activation=activation), models.SPPNet)
    logits, variables = _traced(name, activation)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}


def test_net14_stage_sizes_at_224():
    sizes = _stage_sizes("net14")
    assert sizes["conv1"] == (109, 109, 64)
    assert sizes["pool1"] == (36, 36, 64)  # "about 36x36" (model E)
    assert sizes["conv2_1"] == (35, 35, 128) and sizes["conv2_4"] == (36, 36, 128)
    assert sizes["pool2"] == (18, 18, 128)  # "18x18"
    assert sizes["conv3_1"] == (17, 17, 256) and sizes["conv3_6"] == (18, 18, 256)
    assert sizes["spp"] == (50 * 256,)
    assert sizes["fc3"] == (1000,)


@pytest.mark.parametrize("name", ["model_a", "model_b", "model_c"])
def test_large_model_stage_sizes_at_224(name):
    sizes = _stage_sizes(name)
    assert sizes["conv1"][:2] == (112, 112)
    assert sizes["pool1"][:2] == (56, 56) and sizes["conv2_1"][:2] == (56, 56)
    assert sizes["pool2"][:2] == (28, 28) and sizes["conv3_1"][:2] == (28, 28)
    assert sizes["pool3"][:2] == (14, 14) and sizes["conv4_1"][:2] == (14, 14)
    assert sizes["spp"] == (63 * paper_layers(name)[-4][3],)


# ---------------------------------------------------------------------------------------------
# Small real models: forward pass, dtype, dropout, initialisation statistics

SMALL = {"width": 0.25, "num_classes": 10}
# Kernel shapes of net14 at width 0.25 (64, 128, 256, 4096 -> 16, 32, 64, 1024; SPP 50 x 64).
SMALL_KERNELS = {
    "conv1": (7, 7, 3, 16),
    "conv2_1": (2, 2, 16, 32),
    **{f"conv2_{i}": (2, 2, 32, 32) for i in range(2, 5)},
    "conv3_1": (2, 2, 32, 64),
    **{f"conv3_{i}": (2, 2, 64, 64) for i in range(2, 7)},
    "fc1": (3200, 1024),
    "fc2": (1024, 1024),
    "fc3": (1024, 10),
}
CONVS = [name for name in SMALL_KERNELS if name.startswith("conv")]
FCS = ["fc1", "fc2", "fc3"]
_SMALL_CACHE: dict[str, tuple[models.SPPNet, dict]] = {}


def _fan_in(shape):
    return math.prod(shape[:-1])  # k*k*c_in, or c_in for fc


def _fan_out(shape):
    return math.prod(shape[:-2]) * shape[-1]  # k*k*c_out, or c_out for fc


# Two 96x96 images (inside the ~80-100 range; net14 needs >= 77).
IMAGES = jnp.asarray(np.random.default_rng(1).standard_normal((2, 96, 96, 3)), jnp.float32)


def small(**options) -> tuple[models.SPPNet, dict]:
    """Width-0.25 net14 and its float32 parameters, initialised once per option set.

    Initialised eagerly on IMAGES (parameters do not depend on the input size), so the eager
    forward passes below reuse the compiled ops. The key uses JAX's "rbg" generator only because
    it compiles much faster on CPU than threefry; the statistics checked do not depend on it.
    """
    cache_key = repr(sorted(options.items()))
    if cache_key not in _SMALL_CACHE:
        model = models.build("net14", **SMALL, **options)
        params = model.init(jax.random.key(0, impl="rbg"), IMAGES)["params"]
        _SMALL_CACHE[cache_key] = (model, params)
    model, params = _SMALL_CACHE[cache_key]
    return model, jax.tree.map(np.asarray, params)


def _logits(model, params, train=False, dropout_key=None) -> np.ndarray:
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    return np.asarray(model.apply({"params": params}, IMAGES, train=train, rngs=rngs))


def assert_variance(w: np.ndarray, expected_var: float, layer: str):
    """Mean square of a zero-mean sample within 5 standard errors of the stated variance."""
    ratio = float(np.mean(np.square(w, dtype=np.float64))) / expected_var
    assert abs(ratio - 1) < 5 * math.sqrt(2 / w.size), f"{layer}: Var ratio {ratio:.4f}"


def pooled_variance_ratio(params, expected_var: dict[str, float]) -> tuple[float, int]:
    """sum(w^2 / var) / n over several layers: tight enough to see a 6% variance change."""
    total, count = 0.0, 0
    for name, var in expected_var.items():
        kernel = params[name]["kernel"]
        total += float(np.sum(np.square(kernel, dtype=np.float64))) / var
        count += kernel.size
    return total / count, count


def test_small_model_kernel_shapes_and_zero_biases():
    model, params = small()
    assert {name: params[name]["kernel"].shape for name in params} == SMALL_KERNELS
    for name in params:
        np.testing.assert_array_equal(params[name]["bias"], 0.0)
        assert params[name]["kernel"].dtype == np.float32
    # models.init_params (1 image at 80x80) builds the same parameter tree
    abstract = jax.eval_shape(lambda k: models.init_params(model, k, 80), jax.random.key(0))
    assert jax.tree.map(lambda v: (v.shape, v.dtype), abstract) == jax.tree.map(
        lambda v: (v.shape, v.dtype), params
    )


def test_forward_pass_gives_float32_logits():
    model, params = small()
    logits = _logits(model, params)
    assert logits.shape == (2, 10) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    assert not np.allclose(logits[0], logits[1])
    assert np.std(logits) > 1e-3
    # SPP makes the same parameters work at another input size
    other = jax.eval_shape(lambda p: model.apply({"params": p}, IMAGES[:, :80, :88]), params)
    assert other.shape == (2, 10)


def test_bfloat16_compute_gives_float32_logits_close_to_float32():
    model, params = small()
    model16 = models.build("net14", **SMALL, dtype=jnp.bfloat16)
    logits16 = np.asarray(jax.jit(lambda p: model16.apply({"params": p}, IMAGES))(params))
    assert logits16.dtype == np.float32 and logits16.shape == (2, 10)
    logits32 = _logits(model, params)
    np.testing.assert_allclose(logits16, logits32, atol=0.05 * np.max(np.abs(logits32)))
    # parameters stay float32 under bf16 compute
    abstract = jax.eval_shape(lambda k: models.init_params(model16, k, 80), jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}


def test_dropout_in_training_mode():
    model, params = small()
    with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
        jax.eval_shape(lambda p: model.apply({"params": p}, IMAGES, train=True), params)
    test_logits = _logits(model, params)
    train_a = _logits(model, params, train=True, dropout_key=jax.random.key(3))
    train_a2 = _logits(model, params, train=True, dropout_key=jax.random.key(3))
    train_b = _logits(model, params, train=True, dropout_key=jax.random.key(4))
    assert not np.allclose(train_a, test_logits)
    assert not np.allclose(train_a, train_b)
    np.testing.assert_array_equal(train_a, train_a2)
    # the only difference between the modes is dropout
    model0 = models.build("net14", **SMALL, dropout_rate=0.0)
    train_0 = _logits(model0, params, train=True, dropout_key=jax.random.key(3))
    np.testing.assert_allclose(train_0, test_logits, rtol=1e-5, atol=1e-6)


def test_default_init_is_he_fan_in():
    _, params = small()
    expected = {n: 2.0 / _fan_in(s) for n, s in SMALL_KERNELS.items()}
    for name, var in expected.items():
        assert_variance(params[name]["kernel"], var, name)
    ratio, count = pooled_variance_ratio(params, expected)
    assert abs(ratio - 1) < 4 * math.sqrt(2 / count)


def test_he_fan_out_init():
    _, params = small(init="he_fan_out")
    expected = {n: 2.0 / _fan_out(s) for n, s in SMALL_KERNELS.items()}
    for name, var in expected.items():
        assert_variance(params[name]["kernel"], var, name)
    # conv1: k*k*c_out = 7*7*16 = 784 (not the fan-in 147)
    assert np.std(params["conv1"]["kernel"]) == pytest.approx(math.sqrt(2 / 784), rel=0.05)


def test_init_scale_multiplies_variance():
    _, base = small()
    _, params = small(init_scale=4.0)
    for name, shape in SMALL_KERNELS.items():
        assert_variance(params[name]["kernel"], 4 * 2.0 / _fan_in(shape), name)
        np.testing.assert_allclose(params[name]["kernel"], 2 * base[name]["kernel"], rtol=1e-6)


def test_input_scale_multiplies_the_input_before_conv1():
    model, params = small()
    scaled, scaled_params = small(input_scale=0.125)
    for name in params:  # the scale is a constant, not a parameter: the same draws
        np.testing.assert_array_equal(scaled_params[name]["kernel"], params[name]["kernel"])
    expected = model.apply({"params": params}, IMAGES * 0.125)
    np.testing.assert_allclose(
        scaled.apply({"params": params}, IMAGES), expected, rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="model.input_scale must be > 0"):
        models.build("net14", input_scale=0.0)


def test_layer_scales_touch_only_their_layer():
    _, base = small()
    _, params = small(layer_scales={"conv1": 9.0})
    assert_variance(params["conv1"]["kernel"], 9 * 2.0 / 147, "conv1")
    np.testing.assert_allclose(params["conv1"]["kernel"], 3 * base["conv1"]["kernel"], rtol=1e-6)
    for name in list(SMALL_KERNELS)[1:]:
        np.testing.assert_array_equal(params[name]["kernel"], base[name]["kernel"])


def test_fc_std():
    _, base = small()
    _, params = small(fc_std=(0.01, 0.01, 0.001))
    for name, std in zip(FCS, (0.01, 0.01, 0.001), strict=True):
        assert_variance(params[name]["kernel"], std**2, name)
    for name in CONVS:
        np.testing.assert_array_equal(params[name]["kernel"], base[name]["kernel"])


def test_full_width_fc_std_keeps_the_full_width_fan_in_times_variance():
    # Width 0.25: fc1 fan-in 64 * 50 bins = 3200 against 256 * 50 = 12800 at full width, fc2
    # and fc3 1024 against 4096, so every std doubles; the convs keep their He init.
    _, base = small()
    _, params = small(fc_std=(0.01, 0.01, 0.001), fc_std_scaling="full_width")
    for name, std in zip(FCS, (0.02, 0.02, 0.002), strict=True):
        assert_variance(params[name]["kernel"], std**2, name)
    for name in CONVS:
        np.testing.assert_array_equal(params[name]["kernel"], base[name]["kernel"])


def test_full_width_fc_std_of_the_cpu_scale_model_b():
    # fc1: 512 channels x 63 bins ({7,3,2,1}) = 32256 at full width; 32 x 14 ({3,2,1}) = 448
    # at width 1/16, a 72-fold smaller fan-in. fc2, fc3: 4096 against 256.
    model = models.build(
        "model_b",
        width=1 / 16,
        spp_levels=(3, 2, 1),
        fc_std=(0.01, 0.01, 0.001),
        fc_std_scaling="full_width",
    )
    np.testing.assert_allclose(model.fc_std, (0.01 * math.sqrt(72), 0.04, 0.004), rtol=1e-12)
    full = models.build("model_b", fc_std=(0.01, 0.01, 0.001), fc_std_scaling="full_width")
    np.testing.assert_allclose(full.fc_std, (0.01, 0.01, 0.001), rtol=1e-12)


@pytest.mark.parametrize("activation", ["prelu", "prelu_shared"])
def test_he_prelu_uses_the_initial_slope(activation):
    _, base = small()
    _, params = small(activation=activation, init="he_prelu")
    expected = {n: 2.0 / ((1 + 0.25**2) * _fan_in(s)) for n, s in SMALL_KERNELS.items()}
    for name, var in expected.items():
        assert_variance(params[name]["kernel"], var, name)
        factor = math.sqrt(1 + 0.25**2)
        np.testing.assert_allclose(params[name]["kernel"] * factor, base[name]["kernel"], rtol=1e-6)
    # tight pooled check: ReLU's variance (6% larger) would fail it
    ratio, count = pooled_variance_ratio(params, expected)
    assert abs(ratio - 1) < 4 * math.sqrt(2 / count) < 0.0625 / 3
    for name in CONVS + FCS[:2]:
        a = params[name]["act"]["a"]
        assert a.dtype == np.float32
        assert a.shape == (() if activation == "prelu_shared" else (SMALL_KERNELS[name][-1],))
        np.testing.assert_array_equal(a, 0.25)


# ---------------------------------------------------------------------------------------------
# Bad input


def _message(excinfo) -> str:
    return str(excinfo.value)


def test_unknown_model_names_valid_ones():
    with pytest.raises(ValueError) as info:
        models.build("net15")
    assert "net15" in _message(info)
    assert all(name in _message(info) for name in DEPTH)


def test_unknown_activation_names_valid_ones():
    with pytest.raises(ValueError) as info:
        models.build("net14", activation="elu")
    assert "elu" in _message(info)
    assert all(a in _message(info) for a in ("relu", "lrelu", "prelu", "prelu_shared"))


def test_unknown_initializer_names_valid_ones():
    with pytest.raises(ValueError) as info:
        models.build("net14", init="msra")
    assert "msra" in _message(info)
    assert all(name in _message(info) for name in initializers.NAMES)


@pytest.mark.parametrize(
    "options",
    [
        {"bogus_option": 1},
        {"fc_std": (0.01, 0.01)},
        {"layer_scales": {"conv9": 2.0}},
        {"width": 0.0},
        {"pool_type": "median"},
        {"conv_padding": "valid"},
        {"fc_std_scaling": "width"},
        {"fc_std_scaling": "full_width"},  # with fc_std None there is nothing to rescale
    ],
)
def test_bad_build_options_raise(options):
    with pytest.raises(ValueError):
        models.build("net14", **options)


def _traces(model, height: int, width: int) -> bool:
    jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, height, width, 3))), jax.random.key(0))
    return True


@pytest.mark.parametrize("name", sorted(MIN_IMAGE))
def test_too_small_image_names_the_smallest_that_works(name):
    model = models.build(name)
    with pytest.raises(ValueError) as info:
        _traces(model, 50, 50)
    found = re.search(r"smallest\D*(\d+)", _message(info))
    assert found, _message(info)
    smallest = int(found.group(1))
    assert smallest == MIN_IMAGE[name]
    assert _traces(model, smallest, smallest)
    for height, width in [(smallest - 1, smallest - 1), (smallest, smallest - 1)]:
        with pytest.raises(ValueError, match=str(smallest)):
            _traces(model, height, width)
    # models.init_params and apply go through the same check
    with pytest.raises(ValueError):
        jax.eval_shape(lambda k: models.init_params(model, k, smallest - 1), jax.random.key(0))


def test_non_image_input_raises():
    model = models.build("net14")
    with pytest.raises(ValueError, match="B, H, W, C"):
        jax.eval_shape(lambda k: model.init(k, jnp.zeros((224, 224, 3))), jax.random.key(0))


def test_conv_padding_is_refused_for_the_large_models():
    with pytest.raises(ValueError, match="conv_padding applies to net14/net30 only"):
        models.build("model_a", conv_padding="same")
    assert models.build("net30", conv_padding="same").architecture.layers[2].padding == "SAME"


def _numpy_conv(x: np.ndarray, kernel: np.ndarray, pad: int) -> np.ndarray:
    """Direct NHWC/HWIO convolution at stride 1 with `pad` zero pixels per side (float64)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = kernel.shape[0]
    out_h, out_w = x.shape[1] - k + 1, x.shape[2] - k + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            out += np.einsum("bhwc,cd->bhwd", x[:, i : i + out_h, j : j + out_w], kernel[i, j])
    return out


@pytest.mark.parametrize(("kernel_size", "pad"), [(2, 1), (2, 0), (3, 1), (3, 2), (2, 2)])
def test_padded_conv_matches_the_direct_convolution_and_its_gradients(kernel_size, pad):
    """The lowerings of convs padded by >= k - 1 pixels compute the same function: `full_conv`
    (pad = k - 1, net14's 2x2 pad-1 convs, with its own input gradient) and pad-then-VALID.

    Forward against a NumPy convolution; gradients (input and kernel) against the same layer
    written as one explicitly padded `lax.conv_general_dilated`, the pre-fix formulation.
    """
    layer = layers.ConvLayer(
        6, initializers.get("he_fan_in"), None, kernel_size=kernel_size, padding=pad
    )
    x = jax.random.normal(jax.random.key(1), (2, 9, 9, 4))
    params = layer.init(jax.random.key(0), x)["params"]
    kernel = np.asarray(params["kernel"])
    np.testing.assert_allclose(
        layer.apply({"params": params}, x), _numpy_conv(np.asarray(x), kernel, pad), atol=1e-5
    )

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    cotangent = jax.random.normal(jax.random.key(2), reference(x, kernel).shape)
    ours = jax.grad(
        lambda x, k: jnp.sum(layer.apply({"params": {**params, "kernel": k}}, x) * cotangent),
        argnums=(0, 1),
    )(x, params["kernel"])
    theirs = jax.grad(lambda x, k: jnp.sum(reference(x, k) * cotangent), argnums=(0, 1))(
        x, params["kernel"]
    )
    for got, want in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_no_kernel_gradient_of_net14_is_a_padded_convolution():
    """The padding pathology stays fixed: in the HLO that net14's gradient hands to XLA, every
    kernel-gradient convolution (a window the size of a feature map) has no window padding.

    Autodiff of a conv padded by k - 1 pixels emits its kernel gradient with window padding
    (36x36 pad=1_1), which XLA:CPU runs ~15x slower than on an explicitly padded input;
    conv1's crop (negative padding) is fine.
    """
    model = models.build("net14", activation="prelu", width=1 / 8)
    x = jnp.zeros((2, 224, 224, 3))
    params = model.init(jax.random.key(0), x)["params"]
    grad = jax.jit(jax.grad(lambda p: model.apply({"params": p}, x).sum()))
    hlo = grad.lower(params).as_text(dialect="hlo")
    windows = re.findall(r"convolution\(.*window=\{size=(\d+)x\d+([^}]*)\}", hlo)
    kernel_gradients = [(size, rest) for size, rest in windows if int(size) > 7]
    assert len(kernel_gradients) == 11  # conv1 and the ten 2x2 convs
    for size, rest in kernel_gradients:
        pads = re.search(r"pad=(\S+)", rest)
        padded = pads is not None and re.search(r"(?<![-\d])[1-9]", pads.group(1))
        assert not padded, f"a kernel gradient with window padding: window={{size={size}{rest}}}"


def test_init_returns_only_params_and_applies_at_other_sizes():
    """The standard Flax idiom works: init at 224, apply at 256 and 320 (SPP's point)."""
    model = models.build("net14", activation="prelu")
    variables = jax.eval_shape(
        lambda key: model.init(key, jnp.zeros((1, 224, 224, 3))), jax.random.key(0)
    )
    assert set(variables) == {"params"}
    assert _count(variables) == NET14_RELU_PARAMS + 10_304
    for size in (224, 256, 320):
        logits = jax.eval_shape(
            lambda v, x: model.apply(v, x), variables, jnp.zeros((2, size, size, 3))
        )
        assert logits.shape == (2, 1000)
    table = model.tabulate(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), depth=1)
    assert f"Total Parameters: {NET14_RELU_PARAMS + 10_304:,} " in re.sub(
        r"\x1b\[[0-9;]*m", "", table
    )


def test_gradient_probes_are_opt_in():
    model = models.build("net14", width=0.0625, num_classes=10, probe_gradients=True)
    variables = jax.eval_shape(
        lambda key: model.init(key, jnp.zeros((1, 80, 80, 3))), jax.random.key(0)
    )
    assert set(variables) == {"params", "perturbations"}
    assert set(variables["perturbations"]) == set(models.activated_layers(model))
