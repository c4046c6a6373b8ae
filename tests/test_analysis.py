"""rectifiers_jax.analysis: slopes, dead units, curves, report, trend and the paper's numbers.

Most runs are fabricated (config.json, metrics.jsonl, a checkpoint of parameters chosen here),
so the expected numbers come from NumPy; `tiny_run` (conftest) is one real 4-step run.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats
import support
from support import fabricate_run, run_cli, synthetic_params, write_run

from configs import default
from rectifiers_jax import checkpoints, models
from rectifiers_jax.analysis import curves, dead_units, paper, report, slopes, trend
from rectifiers_jax.data import input_pipeline, mean

NUM_CLASSES = 10  # the digits


def tiny_config(data_dir: str | Path, **model: Any) -> ml_collections.ConfigDict:
    """support.tiny_config with model fields set and 4 training steps."""
    config = support.tiny_config(data_dir, **{"train.num_steps": 4})
    config.model.update(model)
    return config


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ----------------------------------------------------------------------------------------------
# paper


def test_paper_table1_and_result_lookup():
    assert paper.table1_slope("conv1", "prelu_shared") == 0.681
    assert paper.table1_slope("conv1", "prelu") == 0.596
    assert paper.table1_slope("fc2", "prelu") == 0.075
    assert paper.table1_slope("fc3", "prelu") is None
    assert paper.table1_slope("conv1", "relu") is None
    assert len(paper.TABLE1_SLOPES) == 13

    row, exact = paper.find_result("net14", "prelu", "he_fan_in", "10view", (256,))
    assert (row.label, row.top1_error, row.top5_error, exact) == (
        "14-layer PReLU channel-wise",
        32.64,
        12.75,
        True,
    )
    row, exact = paper.find_result("net14", "relu", "xavier", "10view", [256])
    assert (row.top1_error, row.top5_error, exact) == (33.90, 13.44, True)
    row, exact = paper.find_result("model_a", "prelu", "he_fan_out", "dense", (256, 384, 480))
    assert (row.top1_error, row.top5_error, exact) == (22.97, 6.28, True)
    row, exact = paper.find_result("model_a", "relu", "he_fan_out", "dense", (384,))
    assert (row.top1_error, exact) == (24.77, True)
    row, exact = paper.find_result("model_c", "prelu", "he_fan_out", "10view", (256,))
    assert (row.top1_error, exact) == (24.27, True)
    # A centre-crop run still finds its family's row, flagged as another protocol.
    row, exact = paper.find_result("net14", "prelu_shared", "he_fan_in", "center", (88,))
    assert (row.top1_error, exact) == (32.71, False)
    assert paper.find_result("net14", "lrelu", "he_fan_in", "10view", (256,)) == (None, False)
    assert paper.find_result("net30", "relu", "xavier", "10view", (256,)) == (None, False)


# ----------------------------------------------------------------------------------------------
# slopes


@pytest.mark.parametrize("activation", ["prelu", "prelu_shared"])
def test_slopes_table_matches_numpy(tmp_path, capsys, activation):
    config = tiny_config(tmp_path / "tfds", activation=activation)
    model = models.from_config(config.model, NUM_CLASSES)
    params = synthetic_params(model)
    rng = np.random.default_rng(1)
    layers = models.activated_layers(model)
    for layer in layers:
        a = params[layer]["act"]["a"]
        params[layer]["act"]["a"] = rng.uniform(0.05, 0.9, a.shape).astype(np.float32)
    params["conv2_3"]["act"]["a"] = np.full_like(params["conv2_3"]["act"]["a"], 1.25)
    if activation == "prelu":
        params["fc1"]["act"]["a"][3] = -0.5
    run = fabricate_run(tmp_path / "run", config, params, step=7)

    assert slopes.main([str(run)]) == 0
    out = capsys.readouterr().out
    kind = "channel-wise" if activation == "prelu" else "channel-shared"
    assert f"checkpoint step 7; compare 'mean' with the paper's {kind} column" in out
    rows = read_csv(run / slopes.CSV_NAME)
    assert [r["layer"] for r in rows] == layers == list(paper.TABLE1_LAYERS)
    for row in rows:
        a = params[row["layer"]]["act"]["a"].astype(np.float64)
        assert int(row["count"]) == a.size
        assert row["a"] == ("channel-wise" if activation == "prelu" else "shared")
        np.testing.assert_allclose(
            [float(row["mean"]), float(row["min"]), float(row["max"])],
            [a.mean(), a.min(), a.max()],
            rtol=1e-6,
        )
        shared, channel_wise = paper.TABLE1_SLOPES[row["layer"]]
        assert (float(row["paper shared"]), float(row["paper channel-wise"])) == (
            shared,
            channel_wise,
        )
        # The printed table shows the same numbers, rounded.
        printed = next(line for line in out.splitlines() if line.startswith(row["layer"] + " "))
        assert f"{a.mean():.3f}" in printed and f"{shared:.3f}" in printed
    outside = "conv2_3 (max 1.250)"
    if activation == "prelu":
        outside = "conv2_3 (max 1.250); fc1 (min -0.500)"
    assert f"all slopes in (0, 1): no: {outside}" in out


@pytest.mark.slow
def test_slopes_of_a_real_run_and_step_option(tiny_run, capsys):
    assert slopes.main([str(tiny_run), "--step", "4"]) == 0
    out = capsys.readouterr().out
    params = checkpoints.load_params(tiny_run)
    rows = read_csv(tiny_run / slopes.CSV_NAME)
    for row in rows:
        assert float(row["mean"]) == pytest.approx(params[row["layer"]]["act"]["a"].mean())
    assert "all slopes in (0, 1): yes" in out  # 4 steps move `a` only slightly from 0.25
    assert run_cli(slopes.main, [str(tiny_run), "--step", "3"]) == 2
    assert "no checkpoint for step 3" in one_line_error(capsys)


def test_slopes_bad_input_gives_one_line_errors(tmp_path, capsys):
    assert run_cli(slopes.main, [str(tmp_path / "missing")]) == 2
    assert one_line_error(capsys).endswith("missing: no such run directory")

    (tmp_path / "empty").mkdir()
    assert run_cli(slopes.main, [str(tmp_path / "empty")]) == 2
    assert "is not a run directory (no config.json" in one_line_error(capsys)

    relu = fabricate_run(tmp_path / "relu", tiny_config(tmp_path, activation="relu"))
    assert run_cli(slopes.main, [str(relu)]) == 2
    assert one_line_error(capsys) == f"error: {relu} has no learned slopes (activation relu)"

    status = {"status": "running", "step": 0, "message": ""}
    fresh = fabricate_run(tmp_path / "fresh", tiny_config(tmp_path), status=status)
    assert run_cli(slopes.main, [str(fresh)]) == 2
    assert one_line_error(capsys) == (
        f"error: {fresh} has no checkpoints yet (status: running at step 0)"
    )


# ----------------------------------------------------------------------------------------------
# dead units


def test_ever_positive_ignores_padding():
    response = np.full((3, 2, 2, 4), -1.0, np.float32)
    response[0, 1, 1, 0] = 0.5  # unit 0: positive once in a real example
    response[2, 0, 0, 1] = 2.0  # unit 1: positive only in the padding example
    response[:, :, :, 2] = 0.0  # unit 2: exactly 0 is not positive
    response[1, :, :, 3] = 3.0  # unit 3
    mask = np.array([True, True, False])
    got = np.asarray(dead_units.ever_positive(jnp.asarray(response), jnp.asarray(mask)))
    np.testing.assert_array_equal(got, [True, False, False, True])
    fc = np.array([[1.0, -1.0], [-1.0, -2.0]], np.float32)  # [B, C] responses of an fc layer
    np.testing.assert_array_equal(
        dead_units.ever_positive(jnp.asarray(fc), jnp.ones(2, bool)), [True, False]
    )


@pytest.mark.slow
def test_dead_units_match_numpy_count(tmp_path, tiny_run, capsys):
    config = tiny_config(checkpoints.load_config(tiny_run).data.data_dir)
    params = checkpoints.load_params(tiny_run)
    params["fc2"]["bias"][:] = -1e9  # every fc2 unit dead
    logged = {"step": 10, "epoch": 1.0, "dead/conv1": 0.5, "dead/fc2": 0.25}
    run = fabricate_run(tmp_path / "dead", config, params, metrics=[logged])
    combined = tmp_path / "side_by_side.csv"
    argv = [str(run), str(tiny_run), "--num-batches", "2", "--out", str(combined)]
    assert dead_units.main(argv) == 0
    out = capsys.readouterr().out
    assert "256 validation images" in out

    # NumPy count over the same 2 batches: responses never > 0 in a real (mask True) example.
    model = models.from_config(config.model, NUM_CLASSES)
    apply = jax.jit(
        lambda p, x: model.apply({"params": p}, x, train=False, mutable=["intermediates"])[1]
    )
    batches, _ = input_pipeline.eval_iterator(
        config.data, global_batch_size=128, mean=mean.load_mean(config.data)
    )
    alive: dict[str, np.ndarray] = {}
    for _, batch in zip(range(2), batches, strict=False):
        captured = jax.device_get(apply(params, batch["image"]))["intermediates"]
        for layer, value in captured.items():
            response = value["response"][0][batch["mask"]]
            positive = (response.reshape(-1, response.shape[-1]) > 0).any(axis=0)
            alive[layer] = alive.get(layer, np.zeros_like(positive)) | positive
    rows = read_csv(run / dead_units.CSV_NAME)
    assert [r["layer"] for r in rows] == models.activated_layers(model)
    for row in rows:
        expected = ~alive[row["layer"]]
        assert int(row["units"]) == expected.size
        assert int(row["dead"]) == expected.sum(), row["layer"]
        assert float(row["fraction"]) == pytest.approx(expected.mean())
    by_layer = {r["layer"]: r for r in rows}
    assert float(by_layer["fc2"]["fraction"]) == 1.0
    assert (by_layer["conv1"]["logged"], by_layer["conv2_1"]["logged"]) == ("0.5", "")

    merged = read_csv(combined)
    assert list(merged[0]) == [
        "layer",
        "units",
        "dead dead",
        "dead logged",
        "tiny_run dead",
        "tiny_run logged",
    ]
    tiny_logged = [
        r for r in map(json.loads, (tiny_run / "metrics.jsonl").open()) if "dead/fc1" in r
    ]
    assert float(merged[-2]["tiny_run logged"]) == tiny_logged[-1]["dead/fc1"]


def test_dead_units_bad_input(tmp_path, capsys):
    assert run_cli(dead_units.main, [str(tmp_path / "nope")]) == 2
    assert "no such run directory" in one_line_error(capsys)
    fresh = fabricate_run(tmp_path / "fresh", tiny_config(tmp_path))
    assert run_cli(dead_units.main, [str(fresh)]) == 2
    assert "has no checkpoints yet (status: not started)" in one_line_error(capsys)


# ----------------------------------------------------------------------------------------------
# curves


def fake_metrics(errors: list[float], eval_every: int = 2) -> list[dict]:
    """Train records at steps 10, 20, ...; an eval record every `eval_every` of them."""
    records = []
    for i, error in enumerate(errors, start=1):
        record = {"step": 10 * i, "epoch": i / 2, "train/loss": 2.0 / i, "train/top1_error": error}
        if i % eval_every == 0:
            record |= {"eval/top1_error": error + 1.5, "eval/top5_error": error / 3}
        records.append(record)
    return records


def test_curves_csv_equals_metrics(tmp_path, capsys):
    he = fabricate_run(
        tmp_path / "he", tiny_config(tmp_path), metrics=fake_metrics([80, 40, 20, 10])
    )
    xavier_config = tiny_config(tmp_path, init="xavier")
    xavier = fabricate_run(tmp_path / "xavier", xavier_config, metrics=fake_metrics([90.1, 89.9]))
    png = tmp_path / "fig" / "curves.png"
    png.parent.mkdir()
    assert curves.main([str(he), str(xavier), "--out", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG")
    rows = read_csv(png.with_suffix(".csv"))
    expected = [
        (
            label,
            split,
            record["step"],
            record["epoch"],
            f"{split}/top1_error",
            record[f"{split}/top1_error"],
        )
        for label, run in (("he", he), ("xavier", xavier))
        for record in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        for split in ("train", "eval")
        if f"{split}/top1_error" in record
    ]
    got = [
        (r["run"], r["split"], int(r["step"]), float(r["epoch"]), r["metric"], float(r["value"]))
        for r in rows
    ]
    assert got == expected
    assert len(got) == 4 + 2 + 2 + 1

    assert curves.main([str(he), "--metric", "train/loss", "--out", str(png)]) == 0
    losses = [float(r["value"]) for r in read_csv(png.with_suffix(".csv"))]
    assert losses == [2.0, 1.0, 2.0 / 3, 0.5]

    assert curves.main([str(he), str(xavier), "--splits", "eval", "--out", str(png)]) == 0
    rows = read_csv(png.with_suffix(".csv"))
    assert [(r["run"], r["split"], float(r["value"])) for r in rows] == [
        ("he", "eval", 41.5),
        ("he", "eval", 11.5),
        ("xavier", "eval", 91.4),
    ]


def test_curves_bad_input(tmp_path, capsys):
    assert run_cli(curves.main, [str(tmp_path / "nope"), "--out", str(tmp_path / "c.png")]) == 2
    assert "no such run directory" in one_line_error(capsys)
    fresh = fabricate_run(tmp_path / "fresh", tiny_config(tmp_path))
    assert run_cli(curves.main, [str(fresh), "--out", str(tmp_path / "c.png")]) == 2
    assert "has no metrics.jsonl records yet" in one_line_error(capsys)
    run = fabricate_run(tmp_path / "run", tiny_config(tmp_path), metrics=fake_metrics([80, 40]))
    assert (
        run_cli(curves.main, [str(run), "--splits", "test", "--out", str(tmp_path / "c.png")]) == 2
    )
    assert "--splits 'test': each must be one of train, eval" in one_line_error(capsys)


# ----------------------------------------------------------------------------------------------
# report


@pytest.mark.slow
def test_report_beside_the_papers_rows(tmp_path, tiny_run, capsys):
    done = {"status": "done", "step": 40, "message": ""}
    prelu = fabricate_run(
        tmp_path / "prelu", tiny_config(tmp_path), metrics=fake_metrics([50, 30]), status=done
    )
    (prelu / "eval_10view.json").write_text(
        json.dumps({"protocol": "10view", "scales": [256], "top1_error": 31.5, "top5_error": 11.25})
    )
    xavier = fabricate_run(
        tmp_path / "xavier", tiny_config(tmp_path, activation="relu", init="xavier"), status=done
    )
    (xavier / "eval_10view.json").write_text(
        json.dumps({"eval/top1_error": 35.0, "eval/top5_error": 14.0, "scales": [256]})
    )
    large = default.get_config()
    large.model.name, large.model.init = "model_a", "he_fan_out"
    a_prelu = fabricate_run(tmp_path / "a_prelu", large)
    # As `python -m rectifiers_jax.evaluate --protocol=dense --scales=256,384,480` writes it.
    dense = {"protocol": "dense", "scales": [256, 384, 480], "split": "validation", "step": 9}
    dense |= {"top1_error": 23.0, "top5_error": 6.5, "num_examples": 50000}
    dense["per_scale"] = {"384": {"top1_error": 24.5, "top5_error": 7.0, "num_examples": 50000}}
    (a_prelu / "eval_dense.json").write_text(json.dumps(dense))
    out_file = tmp_path / "report.md"
    argv = [str(p) for p in (prelu, xavier, a_prelu, tiny_run)] + ["--out", str(out_file)]
    assert report.main(argv) == 0
    text = out_file.read_text()
    assert text in capsys.readouterr().out
    lines = text.splitlines()

    def result_line(run: str, evaluation: str) -> str:
        return next(line for line in lines if line.startswith(f"| {run} | {evaluation} |"))

    assert result_line("prelu", "eval_10view.json").endswith(
        "| 10view s=256 |  | 31.50 | 11.25 | 14-layer PReLU channel-wise | 10-view s=256 "
        "| 32.64 | 12.75 | yes |"
    )
    assert result_line("prelu", "training (step 20)").endswith(
        "| center s=88 |  | 31.50 | 10.00 | 14-layer PReLU channel-wise | 10-view s=256 "
        "| 32.64 | 12.75 | no |"
    )
    assert (
        "| 35.00 | 14.00 | 14-layer ReLU, Xavier init | 10-view s=256 | 33.90 | 13.44 | yes |"
        in (result_line("xavier", "eval_10view.json"))
    )
    assert result_line("a_prelu", "eval_dense.json (step 9)").endswith(
        "| 50,000 | 23.00 | 6.50 | A PReLU, multi-scale dense | dense s=256,384,480 | 22.97 | 6.28 "
        "| yes |"
    )
    assert result_line("a_prelu", "eval_dense.json (step 9) s=384").endswith(
        "| dense s=384 | 50,000 | 24.50 | 7.00 | A PReLU, dense s=384 | dense s=384 | 24.20 | 7.03 "
        "| yes |"
    )
    # The real run: status, steps and the parameter count of its checkpoint.
    params = checkpoints.load_params(tiny_run)
    total = sum(leaf.size for leaf in jax.tree.leaves(params))
    prelu_params = sum(params[layer]["act"]["a"].size for layer in paper.TABLE1_LAYERS)
    assert "| tiny_run | net14 | prelu | he_fan_in | sklearn_digits | done | 4 |" in text
    assert f"| {total:,} | {prelu_params:,} |" in text
    assert "| tiny_run | training (step 4) | center s=88 | 360 |" in text


def test_report_bad_input(tmp_path, capsys):
    assert run_cli(report.main, [str(tmp_path / "nope")]) == 2
    assert "no such run directory" in one_line_error(capsys)
    run = fabricate_run(tmp_path / "run", tiny_config(tmp_path))
    (run / "eval_center.json").write_text("{not json")
    assert run_cli(report.main, [str(run)]) == 2
    assert "eval_center.json is not valid JSON" in one_line_error(capsys)


# ----------------------------------------------------------------------------------------------
# trend


@pytest.mark.parametrize(
    ("k", "n", "p"), [(0, 10, 0.1), (3, 10, 0.1), (35, 200, 0.1), (51, 200, 0.1), (7, 7, 0.5)]
)
def test_binomial_tail_matches_scipy(k, n, p):
    assert trend.binomial_tail(k, n, p) == pytest.approx(
        scipy.stats.binom.sf(k - 1, n, p), rel=1e-9
    )


def _short_run(losses: list[float], eval_error: float, status: str = "done") -> list[dict]:
    """Per-step train losses, then one evaluation of 200 examples at the last step."""
    records = [{"step": i + 1, "train/loss": loss} for i, loss in enumerate(losses)]
    records.append(
        {
            "step": len(losses),
            "eval/top1_error": eval_error,
            "eval/loss": 2.0,
            "eval/num_examples": 200,
        }
    )
    return records


def test_trend_verdicts_follow_the_stated_rule(tmp_path, capsys):
    falling = [2.3 - 0.01 * i for i in range(30)]
    cases = {
        # 200 examples, 10 classes: 35 correct (82.5% error) gives p = 0.00078, 34 gives 0.0015.
        "learns": (falling, 82.5, "done"),
        "at_the_edge": (falling, 83.0, "done"),
        "loss_rose": (falling[::-1], 50.0, "done"),
        "cut_short": (falling, 50.0, "running"),
        "diverged": (falling, 90.0, "diverged"),
    }
    for name, (losses, error, status) in cases.items():
        write_run(str(tmp_path / name), status, _short_run(losses, error), num_classes=10)
    rows = {name: trend.trend(tmp_path / name) for name in cases}
    assert {name: row["verdict"] for name, row in rows.items()} == {
        "learns": "learns",
        "at_the_edge": "no signal",
        "loss_rose": "no signal",
        "cut_short": "no signal",
        "diverged": "diverged",
    }
    assert rows["learns"]["loss_first"] == pytest.approx(np.mean(falling[:10]))
    assert rows["learns"]["loss_last"] == pytest.approx(np.mean(falling[-10:]))
    assert rows["learns"]["p_value"] == pytest.approx(scipy.stats.binom.sf(34, 200, 0.1))
    out = tmp_path / "trend.json"
    assert run_cli(trend.main, [str(tmp_path / "learns"), "--markdown", "--json", str(out)]) == 0
    assert "| learns |" in capsys.readouterr().out
    assert json.loads(out.read_text())[0]["verdict"] == "learns"


def test_trend_bad_input(tmp_path, capsys):
    write_run(str(tmp_path / "run"), "done", _short_run([2.3] * 20, 50.0), num_classes=None)
    assert run_cli(trend.main, [str(tmp_path / "run")]) == 2
    assert "names no model.num_classes" in one_line_error(capsys)
    assert run_cli(trend.main, [str(tmp_path / "run"), "--window", "0"]) == 2
    assert "--window=0 is not valid" in one_line_error(capsys)
