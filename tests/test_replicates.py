"""Seeds as replicates (analysis.replicates through sweep_table --replicate_key): arm statistics
against NumPy/SciPy computed here, and every verdict of the pre-registered rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from support import history, write_run, write_sweep_config

from launch import sweep as sweep_lib
from rectifiers_jax.analysis import replicates, sweep_table

REPO = Path(__file__).resolve().parents[1]
# Final top-1 errors (%) of three seeds per activation, and (epoch, error) histories.
ERRORS = {"relu": [5.0, 6.0, 7.0], "prelu": [1.0, 1.5, 2.0], "lrelu": [4.0, 8.0, 2.0]}
CLAIMS = [
    {"claim": "PReLU beats ReLU", "metric": "top1_error",
     "lower": {"model.activation": "prelu"}, "higher": {"model.activation": "relu"}},
    {"claim": "ReLU beats PReLU", "metric": "top1_error",
     "lower": {"model.activation": "relu"}, "higher": {"model.activation": "prelu"}},
    {"claim": "LReLU beats ReLU", "metric": "top1_error",
     "lower": {"model.activation": "lrelu"}, "higher": {"model.activation": "relu"}},
    {"claim": "PReLU leaves chance before ReLU", "metric": "first_epoch_below", "threshold": 80,
     "lower": {"model.activation": "prelu"}, "higher": {"model.activation": "relu"}},
    {"claim": "ReLU stalls", "stalls": {"model.activation": "relu"}},
    {"claim": "PReLU converges", "converges": {"model.activation": "prelu"}},
]  # fmt: skip


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    config = write_sweep_config(
        tmp_path,
        {"model.activation": ["relu", "prelu", "lrelu"], "seed": [0, 1, 2]},
        base=str(REPO / "configs" / "default.py"),
        claims=CLAIMS,
    )
    sweep = sweep_lib.load_sweep(config)
    trials = sweep_lib.expand(sweep)
    sweep_lib.write_records(sweep, trials)
    for trial in trials:
        act, seed = trial.overrides["model.activation"], trial.overrides["seed"]
        final = ERRORS[act][seed]
        # PReLU leaves 80% at epoch 1, ReLU at 3, LReLU at 2 but seed 1 never (censored).
        early = {"prelu": 50.0, "relu": 85.0, "lrelu": 85.0}[act]
        second = 85.0 if act == "relu" or (act == "lrelu" and seed == 1) else 70.0
        errors = [early, second, final if not (act == "lrelu" and seed == 1) else 88.0]
        write_run(trial.workdir, "done", history([1, 2, 3], errors, [1.0, 0.5, 0.2]), 10)
    return tmp_path / "sweep"


def test_arms_are_the_seeds_of_each_activation_with_t_intervals(sweep_dir):
    summary, results = sweep_table.read_sweep(str(sweep_dir), num_classes=10)
    arms = {arm.label: arm for arm in replicates.arms(summary, results, "seed")}
    assert list(arms) == ["activation=relu", "activation=prelu", "activation=lrelu"]  # names
    relu = arms["activation=relu"].summary("top1_error")
    x = np.array(ERRORS["relu"])
    half = stats.t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3)
    assert (relu.n, relu.mean, relu.std) == (3, pytest.approx(6.0), pytest.approx(1.0))
    assert (relu.low, relu.high) == (pytest.approx(6 - half), pytest.approx(6 + half))
    lrelu = arms["activation=lrelu"].summary("first_epoch_below", threshold=80)
    assert lrelu.censored == 1 and lrelu.n == 3  # seed 1 never got below 80%: epoch 3 + 1


def test_verdicts_follow_the_pre_registered_rules(sweep_dir):
    summary, results = sweep_table.read_sweep(str(sweep_dir), num_classes=10)
    assert summary["claims"] == CLAIMS  # copied from the sweep config by launch.sweep
    arms = replicates.arms(summary, results, "seed")
    verdicts = {c["claim"]: replicates.judge(c, arms)["verdict"] for c in CLAIMS}
    assert verdicts == {
        "PReLU beats ReLU": "reproduces",  # relu - prelu = 4.5, interval well above 0
        "ReLU beats PReLU": "contradicts",
        "LReLU beats ReLU": "inconclusive",  # 6 - 4.67, but LReLU's seeds spread 2..8
        "PReLU leaves chance before ReLU": "reproduces",
        "ReLU stalls": "contradicts",  # every ReLU seed finished below chance
        "PReLU converges": "reproduces",
    }
    # The interval is Welch's: the same as SciPy's for unequal variances.
    diff, low, high = replicates.welch_interval(ERRORS["relu"], ERRORS["lrelu"])
    test = stats.ttest_ind(ERRORS["relu"], ERRORS["lrelu"], equal_var=False)
    ci = test.confidence_interval(0.95)
    assert (diff, low, high) == pytest.approx((6.0 - 14 / 3, ci.low, ci.high))


def test_cli_writes_arms_and_claims(sweep_dir, capsys):
    assert sweep_table.main([str(sweep_dir), "--num_classes=10", "--replicate_key=seed"]) == 0
    out = capsys.readouterr().out
    assert "| PReLU beats ReLU | reproduces |" in (sweep_dir / "sweep_claims.md").read_text()
    arms_md = (sweep_dir / "sweep_arms.md").read_text()
    assert "| activation=relu | 3 | 6.00 ± 1.00 [" in arms_md
    assert "claims (rules fixed before the runs)" in out
    with pytest.raises(ValueError, match="replicate key 'trial' is not an axis"):
        sweep_table.main([str(sweep_dir), "--replicate_key=trial"])
    assert json.loads((sweep_dir / "sweep.json").read_text())["claims"][4]["stalls"]


def test_a_diverged_trial_has_no_final_error(sweep_dir):
    # ReLU seed 2 diverges after its evaluations: its last error (7.0) is no final error.
    workdir = sweep_dir / "activation=relu,seed=2"
    status = json.loads((workdir / "status.json").read_text())
    (workdir / "status.json").write_text(json.dumps({**status, "status": "diverged"}))
    summary, results = sweep_table.read_sweep(str(sweep_dir), num_classes=10)
    arms = {arm.label: arm for arm in replicates.arms(summary, results, "seed")}
    relu = arms["activation=relu"].summary("top1_error")
    assert (relu.n, relu.mean) == (2, pytest.approx(5.5))
