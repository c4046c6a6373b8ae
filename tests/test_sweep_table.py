"""sweep_table on a fabricated sweep (written by launch.sweep, results by hand) and the workdir
readers of run_files. Chance on 10 classes is 90% top-1 error."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from support import history, run_cli, write_run, write_sweep_config

from launch import sweep as sweep_lib
from rectifiers_jax import run_files
from rectifiers_jax.analysis import sweep_table

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    config = write_sweep_config(
        tmp_path,
        {"model.init": ["he_fan_in", "xavier"], "model.init_scale": [0.25, 1.0, 4.0]},
        base=str(REPO / "configs" / "default.py"),
    )
    sweep = sweep_lib.load_sweep(config)
    trials = {t.name: t.workdir for t in sweep_lib.expand(sweep)}
    sweep_lib.write_records(sweep, list(sweep_lib.expand(sweep)))
    # He at 1/4 variance: finished but never left chance (like Xavier's net30 in Fig. 3).
    write_run(
        trials["init=he_fan_in,init_scale=0.25"],
        "done",
        history([5, 10], [89.9, 88.0], [2.3, 2.3]),
        10,
    )
    write_run(
        trials["init=he_fan_in,init_scale=1.0"],
        "done",
        history([5, 10], [20.0, 3.1], [0.5, 0.12]),
        10,
    )
    nan = history([5], [90.0], [math.nan])
    write_run(trials["init=he_fan_in,init_scale=4.0"], "diverged", nan, 10)
    # Still running: at chance after 6 epochs is stalled, after 2 epochs not yet.
    write_run(trials["init=xavier,init_scale=0.25"], "running", history([6], [89.0], [2.3]), 10)
    # num_classes missing from config and metrics: the CLI's --num-classes decides.
    write_run(trials["init=xavier,init_scale=1.0"], "preempted", history([2], [89.5], [2.3]), None)
    return tmp_path / "sweep"  # init=xavier,init_scale=4.0 never started: missing


def table_rows(sweep_dir: Path) -> dict[str, dict[str, str]]:
    with open(sweep_dir / "sweep_table.csv") as f:
        return {row["trial"]: row for row in csv.DictReader(f)}


def test_outcomes_metrics_and_files(sweep_dir, capsys):
    assert sweep_table.main([str(sweep_dir), "--num-classes", "10"]) == 0
    rows = table_rows(sweep_dir)
    outcomes = {name: row["outcome"] for name, row in rows.items()}
    assert outcomes == {
        "init=he_fan_in,init_scale=0.25": "stalled",
        "init=he_fan_in,init_scale=1.0": "done",
        "init=he_fan_in,init_scale=4.0": "diverged",
        "init=xavier,init_scale=0.25": "stalled",
        "init=xavier,init_scale=1.0": "preempted",
        "init=xavier,init_scale=4.0": "missing",
    }
    done = rows["init=he_fan_in,init_scale=1.0"]
    assert list(done) == [
        "trial", "init", "init_scale", "outcome", "epoch", "step", "top1_error", "top5_error",
        "train_loss",
    ]  # fmt: skip
    assert done["init"] == "he_fan_in" and float(done["init_scale"]) == 1.0
    assert float(done["top1_error"]) == 3.1 and float(done["top5_error"]) == pytest.approx(
        3.1 / 3, 1e-3
    )
    assert (
        float(done["train_loss"]) == 0.12 and done["step"] == "200" and float(done["epoch"]) == 10
    )
    assert rows["init=xavier,init_scale=4.0"]["top1_error"] == ""
    assert rows["init=he_fan_in,init_scale=4.0"]["train_loss"] == "nan"
    markdown = (sweep_dir / "sweep_table.md").read_text()
    assert markdown.startswith("| trial | init | init_scale | outcome |")
    assert markdown.strip() in capsys.readouterr().out
    assert (sweep_dir / "sweep_error_vs_scale.png").read_bytes()[:4] == b"\x89PNG"


def test_thresholds_change_the_classification(sweep_dir):
    # Stalled only after 10 epochs: the running trial at epoch 6 is just running again.
    assert sweep_table.main([str(sweep_dir), "--stall-epochs", "10"]) == 0
    rows = table_rows(sweep_dir)
    assert rows["init=xavier,init_scale=0.25"]["outcome"] == "running"
    # Without --num-classes the trial whose config omits it cannot be called stalled.
    assert rows["init=xavier,init_scale=1.0"]["outcome"] == "preempted"
    # A margin of 1 point: 88% after 10 epochs is no longer "at chance".
    assert sweep_table.main([str(sweep_dir), "--chance-margin", "1"]) == 0
    assert table_rows(sweep_dir)["init=he_fan_in,init_scale=0.25"]["outcome"] == "done"


@pytest.mark.parametrize(
    ("status", "error", "epoch", "expected"),
    [
        ("done", 85.0, 1.0, "stalled"),  # exactly chance - margin counts as chance
        ("done", 84.9, 1.0, "done"),
        ("running", 89.0, 4.9, "running"),
        ("running", 89.0, 5.0, "stalled"),
        ("diverged", 3.0, 30.0, "diverged"),
        ("preempted", 10.0, 3.0, "preempted"),
        ("missing", None, None, "missing"),
    ],
)
def test_classify(status, error, epoch, expected):
    last_eval = {} if error is None else {"eval/top1_error": error, "epoch": epoch}
    assert sweep_table.classify(status, last_eval, 10) == expected


def test_read_metrics_keeps_one_history_across_a_resume(tmp_path):
    records = [{"step": s, "train/loss": 1.0} for s in (20, 40, 60)]
    # Preempted after step 60, resumed from the checkpoint at step 40: steps 60 and 80 again.
    records += [{"step": s, "train/loss": 0.5} for s in (60, 80)]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 100, "train/lo'
    (tmp_path / "metrics.jsonl").write_text(text)  # the last line torn by a kill
    metrics = run_files.read_metrics(tmp_path)
    assert [(r["step"], r["train/loss"]) for r in metrics] == [
        (20, 1.0),
        (40, 1.0),
        (60, 0.5),
        (80, 0.5),
    ]
    assert run_files.final_eval(tmp_path) == {}
    assert run_files.read_status(tmp_path) == {} and run_files.read_config(tmp_path) == {}


def test_missing_sweep_is_a_one_line_error(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert run_cli(sweep_table.main, [str(missing)]) == 2
    assert capsys.readouterr().err == f"error: sweep directory {missing} does not exist\n"
    assert run_cli(sweep_table.main, [str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path / 'sweep.json'} not found" in error and error.count("\n") == 1
