"""Per-layer response and gradient std at initialisation against the paper's closed forms
(Sec. 2.2, Eqs. 9-14), on a quarter-width net30 at 80x80 (ReLU, 27 convs + fc1, fc2 activated)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from support import run_cli

from rectifiers_jax import models
from rectifiers_jax.analysis import variance

WIDTH, IMAGE, NUM_CLASSES = 0.25, 80, 1000


@pytest.fixture(scope="module")
def net30() -> variance.VarianceResult:
    return variance.measure(
        "net30", ["he_fan_in", "xavier"], width=WIDTH, image_size=IMAGE, batch=8
    )


@pytest.mark.slow
def test_layers_are_the_activated_ones(net30):
    assert net30.layers[0] == "conv1" and net30.layers[-3:] == ["conv3_22", "fc1", "fc2"]
    assert len(net30.layers) == 29
    for stds in (*net30.response_std.values(), *net30.gradient_std.values()):
        assert stds.shape == (29,) and np.all(stds > 0)


@pytest.mark.slow
def test_first_layer_response_matches_eq_10(net30):
    # Var[y_1] = n_1 Var[w_1] E[x^2] with unit Gaussian pixels: 2 for He, 1 for Xavier.
    assert net30.response_std["he_fan_in"][0] == pytest.approx(math.sqrt(2), rel=0.05)
    assert net30.response_std["xavier"][0] == pytest.approx(1.0, rel=0.05)


def test_top_gradient_matches_eq_13_one_step(net30):
    # dE/dy_fc2 = relu'(y) * W3^T g with unit g: Var = 1/2 * n_hat * Var[w3], n_hat = classes,
    # Var[w3] = gain / fan_in (He gain 2, Xavier 1).
    fan_in = models.build("net30", width=WIDTH).architecture.fc_features[-1]
    for init, gain in (("he_fan_in", 2.0), ("xavier", 1.0)):
        expected = math.sqrt(0.5 * NUM_CLASSES * gain / fan_in)
        assert net30.gradient_std[init][-1] == pytest.approx(expected, rel=0.1), init


@pytest.mark.slow
def test_he_keeps_the_response_std_through_30_layers(net30):
    he = net30.response_std["he_fan_in"]
    last_conv = net30.layers.index("conv3_22")
    assert 0.5 < he[last_conv] / he[0] < 2.0
    # Xavier loses it: about 2^(-27/2) over the same layers.
    xavier = net30.response_std["xavier"]
    assert xavier[last_conv] / xavier[0] < 1e-3


def test_xavier_over_he_ratio_follows_sqrt2_per_layer(net30):
    depth = np.arange(1, len(net30.layers) + 1)
    forward = net30.response_std["xavier"] / net30.response_std["he_fan_in"]
    # Forward: (1/sqrt(2))^l after l layers.
    assert variance.log2_slope(forward) == pytest.approx(-0.5, rel=0.25)
    np.testing.assert_allclose(np.log2(forward), -depth / 2, atol=1.0)
    # Backward: (1/sqrt(2))^(L - l) from the top, L = 30 weight layers (fc3 included).
    backward = net30.gradient_std["xavier"] / net30.gradient_std["he_fan_in"]
    assert variance.log2_slope(backward) == pytest.approx(0.5, rel=0.25)
    np.testing.assert_allclose(np.log2(backward), -(len(depth) + 1 - depth) / 2, atol=1.0)


def test_cli_writes_table_csv_and_plot(net30, tmp_path, monkeypatch, capsys):
    asked = {}

    def measured(model, inits, **options):
        asked.update(model=model, inits=inits, **options)
        return net30

    monkeypatch.setattr(variance, "measure", measured)
    args = ["--model", "net30", "--init", "he_fan_in,xavier", "--image-size", "80"]
    assert variance.main([*args, "--out", str(tmp_path)]) == 0
    assert asked["model"] == "net30" and asked["inits"] == ["he_fan_in", "xavier"]
    assert asked["image_size"] == 80 and asked["width"] == 0.25
    out = capsys.readouterr().out
    assert "xavier/he_fan_in: log2 std ratio per layer -0.5" in out
    with open(tmp_path / "variance_net30_relu.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 29 and rows[0]["layer"] == "conv1" and rows[-1]["layer"] == "fc2"
    assert float(rows[0]["he_fan_in/response_std"]) == pytest.approx(
        net30.response_std["he_fan_in"][0]
    )
    assert float(rows[-1]["xavier/gradient_std"]) == pytest.approx(net30.gradient_std["xavier"][-1])
    assert (tmp_path / "variance_net30_relu.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "net31"], "error: unknown model 'net31'; valid: net14, net30, model_a"),
        (["--init", "he,xavier"], "error: unknown initializer(s) he; valid: he_fan_in, "),
        (["--activation", "tanh"], "error: unknown activation 'tanh'; valid: relu, lrelu"),
        (["--image-size", "40"], "smallest input image that works is 77x77"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, capsys):
    assert run_cli(variance.main, args) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
