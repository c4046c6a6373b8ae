"""Model combination (Table 7): the ensemble's softmax is the mean of its members', computed
here independently with each member's `inference.Predictor` on the raw validation images."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from support import fabricate_run, run_cli, synthetic_params, tiny_config

from rectifiers_jax import ensemble, inference, models, run_files
from rectifiers_jax.data import mean, sources


@pytest.mark.slow
def test_ensemble_averages_the_members_softmax(tiny_run, tmp_path, digits_dir):
    # A second member with another activation (ReLU) and its own parameters.
    config = tiny_config(digits_dir)
    config.model.activation = "relu"
    relu = fabricate_run(
        tmp_path / "relu", config, synthetic_params(models.from_config(config.model, 10), seed=3)
    )
    out = tmp_path / "ensemble"
    argv = [f"--workdirs={tiny_run},{relu}", f"--out={out}", "--protocol=center"]
    assert ensemble.main(argv) == 0
    result = json.loads((out / "eval_center.json").read_text())

    data = run_files.load_config(tiny_run).data
    records = sources.host_records(data, data.eval_split)
    images, labels = [], []
    for encoded, label in records.dataset.as_numpy_iterator():
        images.append(np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")))
        labels.append(label)
    labels = np.array(labels)
    members = [
        inference.Predictor.from_workdir(tiny_run),
        inference.Predictor.from_workdir(relu, mean=mean.load_mean(config.data)),
    ]
    probs = [member(images) for member in members]

    def top1(p: np.ndarray) -> float:
        return 100.0 * float(np.mean(p.argmax(axis=1) != labels))

    assert result["num_examples"] == 360
    assert [m["activation"] for m in result["members"]] == ["prelu", "relu"]
    for member, p in zip(result["members"], probs, strict=True):
        assert member["top1_error"] == pytest.approx(top1(p), abs=1e-9)
    assert result["top1_error"] == pytest.approx(top1((probs[0] + probs[1]) / 2), abs=1e-9)
    nll = -np.mean(np.log((probs[0] + probs[1])[np.arange(360), labels] / 2 + 1e-12))
    assert result["loss"] == pytest.approx(nll, rel=1e-4)


def test_ensemble_bad_input(tiny_run, tmp_path, capsys):
    assert run_cli(ensemble.main, [f"--workdirs={tiny_run}", f"--out={tmp_path}"]) == 2
    assert "at least 2 runs" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert run_cli(ensemble.main, [f"--workdirs={tiny_run},{missing}", f"--out={tmp_path}"]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_workdirs_whose_names_hold_commas(tiny_run, tmp_path):
    # The sweep tool names trials like `variant=prelu,seed=0`.
    trials = [tmp_path / f"variant={v},seed=0" for v in ("relu", "prelu")]
    for trial in trials:
        shutil.copytree(tiny_run, trial)
    text = ",".join([str(trials[0]), str(tiny_run), str(trials[1])])
    assert ensemble.split_workdirs(text) == [str(trials[0]), str(tiny_run), str(trials[1])]
    with pytest.raises(FileNotFoundError, match="variant=gelu,seed=0: no such run directory"):
        ensemble.split_workdirs(f"{trials[0]},{tmp_path}/variant=gelu,seed=0")
