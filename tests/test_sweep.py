"""launch/sweep.py: grid expansion, command-line round trips, resumption, backends, bad input.

No training runs: a fake runner stands in for `python -m rectifiers_jax.main` and writes the
status.json the real job would.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import support
from absl import flags
from ml_collections import config_flags
from support import run_cli

from launch import sweep as sweep_lib
from rectifiers_jax import run_files

REPO = Path(__file__).resolve().parents[1]
BASE = str(REPO / "configs" / "default.py")
AXES = {
    "model.name": ["net14", "net30"],
    "model.init": ["he_fan_in", "xavier"],
    "model.init_scale": [0.0625, 1.0, 16.0],
}
FIXED = {"train.num_steps": 3, "model.spp_levels": (4, 2, 1)}


def write_sweep_config(tmp_path: Path, axes=None, fixed=None, name="sweep_config.py") -> str:
    return support.write_sweep_config(
        tmp_path,
        axes or AXES,
        base=BASE,
        fixed=FIXED if fixed is None else fixed,
        tpu={"zone": "us-central2-b", "accelerator": "v4-8"},
        name=name,
    )


def write_status(workdir: str, status: str) -> None:
    """status.json as a run writes it; "running" without the workdir's lock held is a run that
    was killed (`run_files.run_state` says "dead")."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    record = {"status": status, "step": 3, "message": "", "pid": 1, "host": "h", "updated": 0}
    (Path(workdir) / "status.json").write_text(json.dumps(record))


def workdir_of(command: list[str]) -> str:
    return next(arg.split("=", 1)[1] for arg in command if arg.startswith("--workdir="))


def test_expand_grid_names_overrides_and_commands(tmp_path):
    sweep = sweep_lib.load_sweep(write_sweep_config(tmp_path))
    trials = sweep_lib.expand(sweep)
    assert len(trials) == 2 * 2 * 3
    # First axis slowest, last fastest; names from the last key component.
    assert [t.name for t in trials[:4]] == [
        "name=net14,init=he_fan_in,init_scale=0.0625",
        "name=net14,init=he_fan_in,init_scale=1.0",
        "name=net14,init=he_fan_in,init_scale=16.0",
        "name=net14,init=xavier,init_scale=0.0625",
    ]
    assert trials[-1].name == "name=net30,init=xavier,init_scale=16.0"
    assert len({t.name for t in trials}) == len(trials)
    trial = trials[4]
    assert trial.overrides == {
        "model.name": "net14",
        "model.init": "xavier",
        "model.init_scale": 1.0,
    }
    assert trial.workdir == str(tmp_path / "sweep" / "name=net14,init=xavier,init_scale=1.0")
    assert trial.command == [
        "python",
        "-m",
        "rectifiers_jax.main",
        f"--config={BASE}",
        f"--workdir={trial.workdir}",
        "--config.train.num_steps=3",
        "--config.model.spp_levels=(4, 2, 1)",
        "--config.model.name=net14",
        "--config.model.init=xavier",
        "--config.model.init_scale=1.0",
    ]


def test_axis_labels_fall_back_to_full_keys_when_ambiguous():
    labels = sweep_lib.axis_labels(["model.init_scale", "optim.init_scale", "seed"])
    assert labels == {
        "model.init_scale": "model.init_scale",
        "optim.init_scale": "optim.init_scale",
        "seed": "seed",
    }


def test_values_round_trip_through_ml_collections_flags():
    """What the main entry point parses back is exactly the value the sweep meant."""
    overrides = {
        "model.init_scale": 2.0**-4,
        "optim.learning_rate": 0.1,
        "optim.weight_decay": 1e-05,
        "model.init": "xavier",
        "train.num_steps": 7,
        "data.random_flip": True,
        "model.spp_levels": (4,),
        "model.fc_std": (0.01, 0.01, 0.001),
        "model.layer_scales": {"conv1": 2.0},
    }
    argv = ["prog", f"--config={BASE}", *sweep_lib.override_args(overrides)]
    flag_values = flags.FlagValues()
    # sys_argv: the config flag defines override flags only for the fields named there.
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    for key, expected in overrides.items():
        section, field = key.split(".")
        value = config[section][field]
        if key == "model.layer_scales":
            value = value.to_dict()
        assert value == expected and type(value) is type(expected), key


def test_none_is_refused():
    with pytest.raises(ValueError, match="cannot be passed"):
        sweep_lib.format_value(None)


def test_dry_run_prints_every_command_and_writes_nothing(tmp_path, capsys):
    config = write_sweep_config(tmp_path)
    assert sweep_lib.main([config, "--dry-run"]) == 0
    commands = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    trials = sweep_lib.expand(sweep_lib.load_sweep(config))
    assert [shlex.split(line) for line in commands] == [t.command for t in trials]
    assert not (tmp_path / "sweep").exists()


def test_local_sweep_skips_finished_trials_and_records_failures(tmp_path, capsys):
    config = write_sweep_config(tmp_path)
    trials = sweep_lib.expand(sweep_lib.load_sweep(config))
    for trial, status in zip(trials, ["done", "diverged", "running", "preempted"], strict=False):
        write_status(trial.workdir, status)
    ran = []

    def fake_main(command: list[str]) -> int:
        ran.append(command)
        workdir = workdir_of(command)
        if workdir == trials[5].workdir:
            return 1  # crashed before writing a status
        if workdir == trials[6].workdir:
            write_status(workdir, "diverged")
            return 3  # the main job's exit status for a diverged run
        write_status(workdir, "done")
        return 0

    assert sweep_lib.main([config, "--local"], runner=fake_main) == 1
    # Done and diverged trials are skipped; dead (killed while running) and preempted ones rerun.
    assert [workdir_of(c) for c in ran] == [t.workdir for t in trials[2:]]
    assert all(
        c[0] == sys.executable and c[1:] == t.command[1:]
        for c, t in zip(ran, trials[2:], strict=True)
    )
    out = capsys.readouterr().out
    assert f"# failed: {trials[5].name} (exit 1, status missing)" in out
    assert trials[6].name not in out.split("# ran")[1]
    record = json.loads((Path(trials[5].workdir) / "trial.json").read_text())
    assert record["last_attempt"]["exit_code"] == 1
    assert record["overrides"] == trials[5].overrides
    assert record["command"] == trials[5].command
    assert record["command_line"] == shlex.join(trials[5].command)
    summary = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [t["name"] for t in summary["trials"]] == [t.name for t in trials]
    assert summary["labels"]["model.init_scale"] == "init_scale"

    # Run again: only the failed trial is left.
    ran.clear()

    def fake_main_that_finishes(command: list[str]) -> int:
        ran.append(command)
        write_status(workdir_of(command), "done")
        return 0

    assert sweep_lib.main([config, "--local"], runner=fake_main_that_finishes) == 0
    assert [workdir_of(c) for c in ran] == [trials[5].workdir]


def test_preempted_exit_zero_is_reported_unfinished(tmp_path, capsys):
    config = write_sweep_config(tmp_path, axes={"model.init": ["xavier"]})

    def preempted(command: list[str]) -> int:
        write_status(workdir_of(command), "preempted")
        return 0

    assert sweep_lib.main([config, "--local"], runner=preempted) == 1
    assert (
        "# unfinished (rerun the sweep to resume): init=xavier (preempted)"
        in capsys.readouterr().out
    )


def test_changed_sweep_refuses_old_trial_dirs(tmp_path, capsys):
    config = write_sweep_config(tmp_path, axes={"model.init": ["xavier"]})
    assert sweep_lib.main([config, "--local"], runner=lambda c: 0) == 1
    changed = write_sweep_config(tmp_path, axes={"model.init": ["xavier"]}, fixed={})
    assert run_cli(lambda argv: sweep_lib.main(argv, runner=lambda c: 0), [changed, "--local"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "made with a different command" in error


def test_slurm_submissions_skip_live_trials(tmp_path, capsys):
    config = write_sweep_config(tmp_path)
    trials = sweep_lib.expand(sweep_lib.load_sweep(config))
    write_status(trials[0].workdir, "running")  # live on the cluster: not resubmitted
    with run_files.workdir_lock(trials[0].workdir):
        assert sweep_lib.main([config, "--slurm", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert f"# skip {trials[0].name} (running)" in out
    commands = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    assert len(commands) == len(trials) - 1
    for command, trial in zip(commands, trials[1:], strict=True):
        assert command[:2] == ["bash", str(REPO / "launch" / "gpu_slurm.sh")]
        split = command.index("--")
        options = command[2:split]
        assert options[options.index("--job-name") + 1] == trial.name
        assert options[options.index("--workdir") + 1] == trial.workdir
        assert options[options.index("--config") + 1] == BASE
        assert command[split + 1 :] == trial.config_args


def test_tpu_trials_run_in_turn_on_one_slice_that_is_deleted_at_the_end(tmp_path, capsys):
    config = write_sweep_config(tmp_path)
    trials = sweep_lib.expand(sweep_lib.load_sweep(config, sweep_dir="gs://bucket/iv"))
    # A dry run reads nothing from the bucket: no cloud access needed.
    assert sweep_lib.main([config, "--tpu=iv", "--sweep_dir=gs://bucket/iv", "--dry_run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert len(commands) == len(trials)
    for i, (command, trial) in enumerate(zip(commands, trials, strict=True)):
        assert command[:6] == [
            "bash", str(REPO / "launch" / "tpu_pod.sh"), "--name", "iv", "--accelerator", "v4-8"
        ]  # fmt: skip
        assert ("--reuse" in command) == (i > 0) and "--detach" not in command
        split = command.index("--")
        assert command[split - 4 : split] == [
            "--workdir", f"gs://bucket/iv/{trial.name}", "--config", BASE
        ]  # fmt: skip
        assert command[split + 1 :] == trial.config_args
    assert lines[-1] == (
        "# delete the slice: gcloud compute tpus tpu-vm delete iv --zone=us-central2-b --quiet"
    )
    # The real sweep deletes the slice even when a trial fails.
    ran = []
    sweep = sweep_lib.load_sweep(config, sweep_dir=str(tmp_path / "iv"))

    def runner(command: list[str]) -> int:
        ran.append(command)
        return 1

    assert sweep_lib.run_sweep(sweep, "tpu", tpu_name="iv", runner=runner) == 1
    assert ran[-1] == [
        "gcloud", "compute", "tpus", "tpu-vm", "delete", "iv", "--zone=us-central2-b", "--quiet"
    ]  # fmt: skip
    assert len(ran) == len(trials) + 1


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"model.int_scale": [1.0]}, "unknown config key 'model.int_scale'; fields of model: "),
        ({"modle.init": ["xavier"]}, "unknown config key 'modle.init': no section 'modle'"),
        ({"model.init_scale": ["big"]}, "model.init_scale=big: "),
    ],
)
def test_bad_axes_fail_before_any_run(tmp_path, capsys, axes, message):
    config = write_sweep_config(tmp_path, axes=axes)
    assert run_cli(lambda argv: sweep_lib.main(argv, runner=pytest.fail), [config, "--local"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {message}") and error.count("\n") == 1
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_cli_errors_are_one_line(tmp_path):
    config = write_sweep_config(tmp_path)
    no_axes = tmp_path / "no_axes.py"
    no_axes.write_text(
        "import ml_collections\ndef get_sweep():\n    return ml_collections.ConfigDict()\n"
    )
    cases = {
        (str(no_axes), "--dry-run"): f"error: {no_axes}: get_sweep() sets no 'base_config'",
        ("missing.py", "--dry-run"): "error: no such file: missing.py",
        (config,): "error: choose --local, --tpu=NAME or --slurm",
        (config, "--tpu=iv"): "error: --tpu needs the sweep dir on a bucket",
    }
    for args, message in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "launch.sweep", *args], cwd=REPO, capture_output=True, text=True
        )
        assert result.returncode == 2, args
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("init_variance.py", 72),
        ("cpu_smoke.py", 4),
        ("cpu_figures.py:fig2", 10),
        ("cpu_table2.py", 30),
        ("cpu_figures.py:fig3", 10),
    ],
)
def test_shipped_sweeps_expand_against_their_base_config(monkeypatch, name, count):
    monkeypatch.chdir(REPO)  # their paths are relative to the repository root
    sweep = sweep_lib.load_sweep(f"configs/sweeps/{name}")
    sweep_lib.check_overrides(sweep)
    assert len(sweep_lib.expand(sweep)) == count


def test_cpu_figures_sweep_runs_the_papers_inits_on_the_right_model(monkeypatch):
    monkeypatch.chdir(REPO)
    for figure, model, he_init in (
        ("fig2", "model_b", "he_fan_out"),
        ("fig3", "net30", "he_fan_in"),
    ):
        trials = sweep_lib.expand(sweep_lib.load_sweep(f"configs/sweeps/cpu_figures.py:{figure}"))
        assert {t.command[3] for t in trials} == {f"--config=configs/cpu.py:model={model}"}
        assert [t.name for t in trials[:2]] == [f"init={he_init},seed=0", f"init={he_init},seed=1"]
        assert trials[-1].workdir == f"runs/sweeps/{figure}_cpu/init=xavier,seed=4"
    with pytest.raises(ValueError, match="'fig4' is not one of fig2, fig3"):
        sweep_lib.load_sweep("configs/sweeps/cpu_figures.py:fig4")


def test_dead_trials_rerun_live_ones_do_not(tmp_path, capsys):
    config = write_sweep_config(tmp_path)
    trials = sweep_lib.expand(sweep_lib.load_sweep(config))
    # Killed: "running" with no process holding the lock. Live: its lock is held.
    write_status(trials[0].workdir, "running")
    write_status(trials[1].workdir, "running")
    with run_files.workdir_lock(trials[1].workdir):
        assert sweep_lib.main([config, "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert f"# skip {trials[1].name} (running)" in out
    assert f"# skip {trials[0].name}" not in out and "--workdir=" + trials[0].workdir in out


def test_variants_set_several_keys_and_lead_the_trial_names():
    sweep = sweep_lib.load_sweep("configs/sweeps/cpu_table2.py")
    trials = sweep_lib.expand(sweep)
    assert len(trials) == 6 * 5
    assert [t.name for t in trials[:2]] == ["variant=relu,seed=0", "variant=relu,seed=1"]
    lrelu = next(t for t in trials if t.name == "variant=lrelu_0.25,seed=3")
    assert lrelu.overrides == {"model.activation": "lrelu", "model.lrelu_slope": 0.25, "seed": 3}
    assert lrelu.config_args == [
        "--config.model.activation=lrelu", "--config.model.lrelu_slope=0.25", "--config.seed=3"
    ]  # fmt: skip
    sweep_lib.check_overrides(sweep)  # every variant's keys exist in the base config
    assert [claim["lower"] for claim in sweep.claims][0] == {"model.activation": "prelu"}
