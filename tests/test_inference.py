"""Inference from a run's directory alone: the predictor equals the centre evaluation, the
`predict` command prints named classes, and reading a run needs no TensorFlow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rectifiers_jax import evaluate, inference, predict, run_files

REPO = Path(__file__).resolve().parents[1]


def validation_images(tiny_run: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The raw validation digits (uint8 [8, 8, 3]) and labels, decoded with PIL, not TF."""
    from rectifiers_jax.data import sources  # TF: only to list the split's encoded images

    config = run_files.load_config(tiny_run)
    records = sources.host_records(config.data, config.data.eval_split)
    images, labels = [], []
    for encoded, label in records.dataset.as_numpy_iterator():
        images.append(np.asarray(Image.open(__import__("io").BytesIO(encoded)).convert("RGB")))
        labels.append(label)
    return images, np.array(labels)


@pytest.mark.slow
def test_predictor_accuracy_equals_the_centre_evaluation(tiny_run):
    predictor = inference.Predictor.from_workdir(tiny_run)
    assert predictor.class_names == tuple(str(d) for d in range(10))
    assert predictor.mean.shape == (3,)  # the run's per-channel mean, saved as mean.npy
    images, labels = validation_images(tiny_run)
    probs = predictor(images)
    assert probs.shape == (360, 10) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    top1_error = 100.0 * np.mean(probs.argmax(axis=1) != labels)
    result = evaluate.evaluate_run(str(tiny_run), protocol="center")
    assert result["num_examples"] == len(labels) == 360
    assert top1_error == pytest.approx(result["top1_error"], abs=1e-9)


def test_predict_prints_the_top_classes_with_names(tiny_run, tmp_path, capsys):
    path = tmp_path / "digit.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(path)
    assert predict.main(["--workdir", str(tiny_run), str(path), "--top_k=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(path) and len(lines) == 4
    names = [line.split()[1] for line in lines[1:]]
    probs = [float(line.split()[2]) for line in lines[1:]]
    assert set(names) <= {str(d) for d in range(10)} and probs == sorted(probs, reverse=True)


def test_checkpoints_and_inference_import_without_tensorflow(tiny_run):
    """A laptop without TensorFlow (no macOS/aarch64 wheels) can read and use a run."""
    script = textwrap.dedent(
        f"""
        import importlib.abc
        import importlib.machinery
        import sys

        class NoTensorFlow(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            # Any import of these packages fails, as where they cannot be installed.

            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "clu"):
                    return importlib.machinery.ModuleSpec(name, self)

            def create_module(self, spec):
                raise ImportError(f"{{spec.name}} is not installed here")

        sys.meta_path.insert(0, NoTensorFlow())
        import numpy as np
        from rectifiers_jax import checkpoints, inference
        params = checkpoints.load_params({str(tiny_run)!r})
        predictor = inference.Predictor.from_workdir({str(tiny_run)!r})
        probs = predictor([np.zeros((8, 8, 3), np.uint8)])
        assert probs.shape == (1, 10), probs.shape
        assert not any(m.startswith("tensorflow") for m in sys.modules)
        print("ok", len(params))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok")


def test_resized_shape_keeps_the_aspect_ratio_like_the_pipeline():
    # floor(long * shorter / short + 0.5), as data.preprocessing.resized_shape
    assert inference.resized_shape(300, 451, 256) == (256, 385)
    assert inference.resized_shape(400, 300, 88) == (117, 88)
    assert inference.resized_shape(8, 8, 88) == (88, 88)
