"""init_check: per-layer response stds, logit std, initial loss and sharpness at init."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from support import tiny_config

from rectifiers_jax.analysis import init_check
from rectifiers_jax.data import tfds_source


def test_uniform_label_loss_is_the_mean_over_every_label():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7)) * 3
    every = [init_check.label_loss(logits, np.full(4, c)) for c in range(7)]
    np.testing.assert_allclose(init_check.uniform_label_loss(logits), np.mean(every, axis=0))
    assert np.all(init_check.uniform_label_loss(logits) >= math.log(7))
    np.testing.assert_allclose(init_check.uniform_label_loss(np.zeros((2, 7))), math.log(7))


def test_last_layer_sharpness_is_the_top_eigenvalue_of_the_dense_hessian():
    rng = np.random.default_rng(1)
    features, logits = rng.normal(size=(5, 6)) + 1.0, rng.normal(size=(5, 3))
    x = np.concatenate([features, np.ones((5, 1))], axis=1)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    dense = (
        sum(
            np.kron(np.outer(xi, xi), np.diag(pi) - np.outer(pi, pi))
            for xi, pi in zip(x, p, strict=True)
        )
        / 5
    )  # rows (feature, class), matching V[feature, class]
    expected = np.linalg.eigvalsh(dense)[-1]
    assert init_check.last_layer_sharpness(features, logits, 500) == pytest.approx(expected, 1e-6)


def test_check_on_the_configs_own_dataset_has_real_labels(digits_dir):
    config = tiny_config(digits_dir)
    result = init_check.check(config, batch_size=4)
    assert result["num_classes"] == 10 and result["loss_real"] is not None
    assert len(result["layers"]) == len(result["response_std"]) == 13
    assert all(s > 0 for s in result["response_std"])
    assert result["loss_uniform"] >= result["ln_classes"] == pytest.approx(math.log(10))
    assert "'sklearn_digits'" in result["input"]
    text = init_check.format_result(result)
    assert "conv3_6" in text and "ln(10)" in text and "sharpness" in text


def test_photos_stand_in_for_an_absent_dataset(tmp_path):
    photos_dir = str(tmp_path / "photos")
    tfds_source.open_tfds("photos/tiny", photos_dir)  # prepared here, small
    config = tiny_config(tmp_path / "empty")
    config.data.name = "imagenet2012"
    config.model.input_scale = 1 / 256
    result = init_check.check(
        config, batch_size=4, photos_dir=photos_dir, photos_name="photos/tiny"
    )
    assert result["num_classes"] == 1000 and result["loss_real"] is None
    assert "standing in for 'imagenet2012'" in result["input"]
    # An unknown dataset needs --num_classes; Gaussian pixels need no data at all.
    config.data.name = "somewhere_else"
    with pytest.raises(ValueError, match="pass --num_classes"):
        init_check.check(config, images="gaussian")
    result = init_check.check(config, images="gaussian", num_classes=6, pixel_std=2.0)
    assert result["num_classes"] == 6 and result["input_std"] == pytest.approx(2.0, rel=0.05)


@pytest.mark.slow
def test_command_line_prints_the_report_and_refuses_bad_flags(digits_dir, tmp_path):
    command = [
        sys.executable,
        "-m",
        "rectifiers_jax.analysis.init_check",
        "--config=configs/default.py",
        f"--config.data.data_dir={digits_dir}",
        "--config.model.width=0.0625",
        "--batch_size=4",
        f"--json={tmp_path / 'init.json'}",
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "initial loss, uniform labels" in done.stdout and "within 1 nat" in done.stdout
    assert json.loads((tmp_path / "init.json").read_text())["num_classes"] == 10
    bad = subprocess.run([*command, "--batch_size=0"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: --batch_size=0 is not valid; use an integer >= 1"
    )
