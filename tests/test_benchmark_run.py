"""`python -m benchmarks.run` end to end on a tiny net14, and the PyTorch twin's equivalence."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rectifiers_jax import models

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None
SPEED_KEYS = {
    "jax_images_per_sec",
    "torch_images_per_sec",
    "torch_nchw_images_per_sec",
    "torch_channels_last_images_per_sec",
    "ratio",
    "ratio_per_cpu_second",
}
MODEL_KEYS = {
    "train",
    "eval",
    "compile_s",
    "flops_per_step",
    "achieved_flops_per_sec",
    "matmul_flops_per_sec",
    "utilisation",
    "peak_memory_bytes",
    "prelu_vs_relu",
}


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow  # spawns a process that compiles three steps (~15 s warm, ~45 s cold)
def test_run_writes_positive_finite_numbers(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "benchmarks.run", "--models", "net14", "--width", "0.0625"]
    command += ["--image-size", "80", "--batch", "8", "--rounds", "1", "--steps", "1"]
    command += ["--matmul-size", "256", "--json", str(out)]
    command += ["--compare-torch"] if HAS_TORCH else []
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "net14    train" in done.stdout

    result = json.loads(out.read_text())
    assert {"machine", "command", "versions", "config", "net14"} <= set(result)
    record = result["net14"]
    assert set(record) >= MODEL_KEYS
    for mode in ("train", "eval"):
        assert set(record[mode]) == SPEED_KEYS
        speeds = record[mode].values() if HAS_TORCH else [record[mode]["jax_images_per_sec"]]
        assert all(_positive(v) for v in speeds), record[mode]
        if not HAS_TORCH:
            assert record[mode]["torch_images_per_sec"] is None
    assert all(_positive(record[key]) for key in MODEL_KEYS - {"train", "eval"}), record


@pytest.mark.parametrize(
    "name, activation, size, options",
    [
        ("net14", "prelu", 80, {}),  # alternating pad 0 / pad 1 2x2 convs, regular SPP bins
        ("net14", "prelu_shared", 100, {"conv_padding": "same"}),
        ("model_a", "lrelu", 112, {}),  # 3x3 'same' stages, SPP {7,3,2,1}
        ("model_b", "relu", 200, {"spp_bins": "adaptive"}),  # 12-pixel map: a ragged level 7
    ],
)
def test_torch_twin_matches_the_jax_model(name, activation, size, options):
    torch = pytest.importorskip("torch")
    from benchmarks import torch_models

    model = models.build(name, activation=activation, width=1 / 16, **options)
    params = models.init_params(model, jax.random.key(0, impl="rbg"), size)
    images = np.random.default_rng(0).normal(0, 1, (2, size, size, 3)).astype(np.float32)
    expected = np.asarray(model.apply({"params": params}, images))
    net = torch_models.twin(model)
    torch_models.load_flax_params(net, params)
    for fmt in (torch.contiguous_format, torch.channels_last):
        net = net.to(memory_format=fmt)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=fmt)
        probs = torch_models.make_eval_step(net)(x).numpy()
        np.testing.assert_allclose(probs, jax.nn.softmax(expected), atol=1e-5)
