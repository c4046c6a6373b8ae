"""Faults and bad input, through the real command line: one line for every bad input (exit 2,
nothing written), one run per workdir, honest status after a crash, SIGTERM/Ctrl-C saves, a
failed save ends the process, damaged checkpoints name their step, older steps can be resumed.

Exit codes (rectifiers_jax.cli): 0 done, 75 preempted, 3 diverged, 2 bad input, 1 failure,
130 a second Ctrl-C.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import encode, photo, tiny_config

from rectifiers_jax import checkpoints, cli, preemption, run_files, train

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--config.model.width=0.0625",
    "--config.train.global_batch_size=16",
    "--config.train.eval_batch_size=64",
]


def command(workdir: Path, data_dir: str, *args: str, config: str = "configs/default.py"):
    return [
        sys.executable, "-m", "rectifiers_jax.main", f"--config={config}",
        f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *TINY, *args,
    ]  # fmt: skip


def start(argv: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as a user's laptop
    return subprocess.Popen(
        argv, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def status(workdir: Path) -> dict:
    return json.loads((workdir / "status.json").read_text())


def wait_for(path: Path, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def assert_one_error_line(err: str, fragment: str) -> None:
    lines = [
        line for line in err.strip().splitlines() if not line.startswith(("WARNING: All", "I0000"))
    ]
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith("error: ") and fragment in lines[-1], err[-3000:]
    assert sum(line.startswith("error:") for line in lines) == 1, err[-3000:]


# ----------------------------------------------------------------------------------------------
# Every bad input: one line, exit 2, nothing created or overwritten.


def _broken_config(tmp: Path) -> str:
    path = tmp / "broken.py"
    path.write_text("def get_config(:\n    pass\n")
    return f"--config={path}"


def _folder(tmp: Path, classes: dict[str, int]) -> str:
    root = tmp / "folder"
    for name, count in classes.items():
        (root / "train" / name).mkdir(parents=True)
        for i in range(count):
            (root / "train" / name / f"{i}.jpg").write_bytes(encode(photo("chelsea")))
    return f"--config.data.folder={root}"


# Each a distinct path to an error (other values of the same fields are unit-tested where they
# are checked: test_optim, test_models, test_datasets, test_input_pipeline).
BAD_INPUT = [
    ("workdir is a file", lambda t, w: [], "is a file, not a directory"),
    ("missing config file", lambda t, w: ["--config=configs/nope.py"], "no config file"),
    ("config syntax error", lambda t, w: [_broken_config(t)], "broken.py line 1"),
    ("unknown field", lambda t, w: ["--config.model.widht=1"], 'Did you mean "width"'),
    ("unknown flag", lambda t, w: ["--workdri=x"], "Did you mean: workdir"),
    ("wrong type", lambda t, w: ["--config.model.width=abc"], "--config.model.width=abc"),
    ("malformed tuple", lambda t, w: ["--config.model.spp_levels=(6,3"], "spp_levels"),
    ("batch 0", lambda t, w: ["--config.train.global_batch_size=0"], "global_batch_size=0"),
    ("empty dataset name", lambda t, w: ["--config.data.name="], "config.data.name is empty"),
    ("image too small", lambda t, w: ["--config.data.image_size=40"], "smallest input image"),
    ("dropout", lambda t, w: ["--config.model.dropout_rate=1.5"], "dropout_rate=1.5"),
    ("learning rate", lambda t, w: ["--config.optim.learning_rate=-1"], "learning_rate=-1"),
    ("restore step", lambda t, w: ["--config.train.restore_step=5"], "restore_step=5: no such"),
    (
        "single-class folder",
        lambda t, w: ["--config.data.source=folder", _folder(t, {"cat": 2})],
        "1 class subfolder",
    ),
    (
        "empty class folder",
        lambda t, w: ["--config.data.source=folder", _folder(t, {"cat": 2, "dog": 0})],
        "holds no images",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "args", "fragment"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, digits_dir, name, args, fragment
):
    workdir = tmp_path / "run"
    if name == "workdir is a file":
        workdir.write_text("not a directory")
    argv = command(workdir, digits_dir, *args(tmp_path, workdir))
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = finish(start(argv))
    assert code == cli.EXIT_BAD_INPUT, err[-3000:]
    assert_one_error_line(err, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no workdir was created


def test_unwritable_workdir_is_refused_before_anything_is_created(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a user without rights
    with pytest.raises(ValueError, match=f"workdir {tmp_path} is not writable"):
        run_files.check_workdir(tmp_path)
    with pytest.raises(ValueError, match=f"parent {tmp_path} is not writable"):
        run_files.check_workdir(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------------------------
# One run per workdir; the status of a dead run


def test_a_second_run_on_a_locked_workdir_refuses_naming_the_holder(digits_dir, tmp_path):
    with run_files.workdir_lock(tmp_path):
        assert run_files.is_locked(tmp_path)
        with pytest.raises(run_files.WorkdirBusyError, match=f"pid {os.getpid()} on "):
            train.train_and_evaluate(tiny_config(digits_dir), str(tmp_path))
    assert not run_files.is_locked(tmp_path)
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "status.json").exists()


def test_config_drift_names_fields_and_spares_the_safe_ones():
    saved = {"seed": 0, "model": {"width": 0.125, "spp_levels": [6, 3]}, "train": {"num_steps": 9}}
    new = {"seed": 1, "model": {"width": 0.25, "spp_levels": (6, 3)}, "train": {"num_steps": 99}}
    assert run_files.config_drift(saved, new) == ["model.width: 0.125 -> 0.25", "seed: 0 -> 1"]
    assert run_files.config_drift(saved, new, "seed, model.width") == []
    assert run_files.config_drift(saved, {"model": {"width": 0.125, "new_field": 1}}) == []


@pytest.mark.slow
def test_killed_run_reads_dead_and_the_next_run_resumes(digits_dir, tmp_path):
    workdir = tmp_path / "run"
    args = ["--config.train.num_steps=12", "--config.train.log_every_steps=2"]
    args += ["--config.train.checkpoint_every_steps=2"]
    first = start(command(workdir, digits_dir, *args))
    wait_for(workdir / "checkpoints" / "2")
    first.kill()  # SIGKILL: no chance to write a final status
    first.communicate()
    assert status(workdir)["status"] == "running"
    assert run_files.run_state(workdir)["status"] == "dead"  # the lock died with the process
    code, err = finish(start(command(workdir, digits_dir, *args)))
    assert code == cli.EXIT_DONE, err[-3000:]
    assert "resumed from step" in err and status(workdir)["status"] == "done"


# ----------------------------------------------------------------------------------------------
# SIGTERM and Ctrl-C


@pytest.mark.slow
def test_ctrl_c_saves_and_a_second_sigterm_cannot_cut_the_save_short(digits_dir, tmp_path):
    workdir = tmp_path / "run"
    args = ["--config.train.num_steps=400", "--config.train.log_every_steps=2"]
    run = start(command(workdir, digits_dir, *args))
    wait_for(workdir / "metrics.jsonl")
    run.send_signal(signal.SIGINT)
    time.sleep(0.3)
    run.send_signal(signal.SIGTERM)
    code, err = finish(run)
    assert code == cli.EXIT_PREEMPTED, err[-3000:]
    stopped = status(workdir)
    assert stopped["status"] == "preempted" and "by SIGINT" in stopped["message"]
    saved = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    assert saved[-1] == stopped["step"]
    assert "Traceback" not in err


def test_a_second_ctrl_c_stops_at_once_a_second_sigterm_does_not():
    # Python's default, or SIG_IGN when pytest was started in the background by a shell.
    previous = signal.getsignal(signal.SIGINT)
    with preemption.StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # logged; the save in progress goes on
        assert stop.requested == "SIGTERM" and stop.should_stop(0, lambda step: False)
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored


def test_an_interrupted_run_says_failed_not_running(digits_dir, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt("second SIGINT: stopping without saving")

    monkeypatch.setattr(checkpoints.Checkpointer, "save", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(tiny_config(digits_dir), str(tmp_path))
    assert status(tmp_path) | {"pid": 0, "host": "", "updated": 0} == {
        "status": "failed",
        "step": 1,
        "message": "second SIGINT: stopping without saving",
        "pid": 0,
        "host": "",
        "updated": 0,
    }


# ----------------------------------------------------------------------------------------------
# A failed save; damaged checkpoints; resuming from an older step


@pytest.mark.slow
def test_a_failed_save_ends_the_run_with_one_line_and_status_failed(digits_dir, tmp_path):
    workdir = tmp_path / "run"
    args = ["--config.train.num_steps=12", "--config.train.checkpoint_every_steps=4"]
    # Files of 100 KiB at most: config, status and metrics fit; the checkpoint's arrays do not.
    # Python ignores SIGXFSZ, so a longer write fails with EFBIG ("File too large"), as on a
    # full disk. (ulimit in a shell, not preexec_fn: forking this threaded process is unsafe.)
    argv = [
        "bash",
        "-c",
        'ulimit -f 100 && exec "$@"',
        "bash",
        *command(workdir, digits_dir, *args),
    ]
    run = start(argv)
    code, err = finish(run, timeout=300)
    assert code == cli.EXIT_FAILURE, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: writing a checkpoint to {workdir}/checkpoints failed: "), err
    assert "File too large" in last
    failed = status(workdir)
    assert failed["status"] == "failed" and "File too large" in failed["message"]


def _truncate_arrays(step_dir: Path) -> None:
    for path in glob.glob(f"{step_dir}/state/ocdbt.process_*/d/*"):
        os.truncate(path, 8)


@pytest.mark.slow
def test_damaged_checkpoint_names_step_and_an_older_one_resumes(digits_dir, tmp_path):
    workdir = tmp_path / "run"
    args = ["--config.train.checkpoint_every_steps=4", "--config.train.keep_checkpoints=3"]
    code, err = finish(start(command(workdir, digits_dir, "--config.train.num_steps=8", *args)))
    assert code == cli.EXIT_DONE, err[-3000:]
    _truncate_arrays(workdir / "checkpoints" / "8")  # other damage: test_checkpoints
    resume = command(workdir, digits_dir, "--config.train.num_steps=12", *args)
    code, err = finish(start(resume))
    assert code == cli.EXIT_BAD_INPUT, err[-3000:]
    assert_one_error_line(err, f"step 8 from {workdir}/checkpoints/8")
    assert "--config.train.restore_step=4" in err
    code, err = finish(start([*resume, "--config.train.restore_step=4"]))
    assert code == cli.EXIT_DONE, err[-3000:]
    assert "resumed from step 4" in err and status(workdir)["step"] == 12
    # The damaged step was moved aside, not deleted, and no retention removed step 4's peers.
    assert (workdir / "checkpoints_set_aside" / "8").is_dir()
    kept = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    assert kept == [4, 8, 12]


def test_late_loop_callbacks_are_quiet_and_other_unraisable_errors_are_not(monkeypatch):
    # tensorstore reports its callbacks' errors after a failed orbax operation as unraisable.
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable))
    cli.quiet_late_loop_callbacks()

    class RaisesOnDelete:
        def __init__(self, error: Exception):
            self.error = error

        def __del__(self):
            raise self.error

    RaisesOnDelete(RuntimeError("Event loop is closed"))
    RaisesOnDelete(RuntimeError("another error"))
    RaisesOnDelete(ValueError("Event loop is closed"))
    assert [repr(u.exc_value) for u in seen] == [
        "RuntimeError('another error')",
        "ValueError('Event loop is closed')",
    ]
