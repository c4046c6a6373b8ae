"""The workdir contract: every file a run writes beside its checkpoints, and every reader of them.

    WORKDIR/config.json       the config as run (`RunWriter.write_config`, `load_config`)
    WORKDIR/metrics.jsonl     one JSON object per logged step (`append_metrics`, `read_metrics`)
    WORKDIR/status.json       {"status", "step", "message", "pid", "host", "updated"}
                              (`write_status`, `read_status`, `run_state`)
    WORKDIR/mean.npy          the mean image the run subtracts (0..255 units; absent when none)
    WORKDIR/class_names.json  one name per output class (`write_inputs`, `read_class_names`)
    WORKDIR/run.lock          held by the run training in the workdir (`workdir_lock`)
    WORKDIR/eval_<protocol>.json   `python -m rectifiers_jax.evaluate` (`eval_path`)
    WORKDIR/checkpoints/      orbax, see `rectifiers_jax.checkpoints`
    WORKDIR/checkpoints_set_aside/<step>/  newer checkpoints moved aside by a resume from an
                              older step (`train.restore_step`); never deleted by the code

Status: "running" while a run trains (`updated` is refreshed at every logged step), then "done",
"preempted" (stopped by SIGTERM or Ctrl-C after saving: run the same command again),
"diverged" (non-finite loss) or "failed" (an error; `message` says which). A run killed without
writing its final status still says "running": `run_state` calls it "dead" when no process
holds its lock (local workdirs) or its status has not been updated for `STALE_SECONDS`.

Keys of metrics.jsonl: `step` (int), `epoch` (float), `train/loss`, `train/top1_error`
(percent), `learning_rate`, `steps_per_sec`, `slope/<layer>` (mean PReLU `a`), `dead/<layer>`
(fraction of units never positive over the logged batch); evaluations add `eval/loss`,
`eval/top1_error`, `eval/top5_error` (percent) and `eval/num_examples`.

Paths may be local or `gs://` (etils.epath). Readers of optional files return empty values
when the file is missing, so a sweep can list trials that never started.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
MEAN_FILE = "mean.npy"
CLASS_NAMES_FILE = "class_names.json"
LOCK_FILE = "run.lock"
CHECKPOINT_DIR = "checkpoints"
SET_ASIDE_DIR = "checkpoints_set_aside"
STATUSES = ("running", "done", "preempted", "diverged", "failed")
# A remote (gs://) run whose status was not updated for this long counts as dead.
STALE_SECONDS = 1800.0


def eval_path(workdir: str | epath.PathLike, protocol: str) -> epath.Path:
    """`WORKDIR/eval_<protocol>.json`, written by the evaluation command."""
    return epath.Path(workdir) / f"eval_{protocol}.json"


class RunWriter:
    """Writes config.json, metrics.jsonl and status.json; only process 0 writes, others no-op."""

    def __init__(self, workdir: str | epath.PathLike):
        self.workdir = epath.Path(workdir)
        self.is_writer = jax.process_index() == 0

    def write_config(self, config: ml_collections.ConfigDict) -> None:
        if self.is_writer:
            (self.workdir / CONFIG_FILE).write_text(config.to_json(indent=2))

    def append_metrics(self, record: dict[str, Any]) -> None:
        if self.is_writer:
            with (self.workdir / METRICS_FILE).open("a") as f:
                f.write(json.dumps(record) + "\n")

    def write_inputs(self, mean: np.ndarray | None, class_names: Sequence[str]) -> None:
        """What inference needs beside the config: the mean image and the class names."""
        if self.is_writer:
            if mean is not None:
                buffer = io.BytesIO()
                np.save(buffer, np.asarray(mean, np.float32))
                (self.workdir / MEAN_FILE).write_bytes(buffer.getvalue())
            names = json.dumps(list(class_names)) + "\n"
            _write_atomically(self.workdir / CLASS_NAMES_FILE, names)

    def write_status(self, status: str, step: int, message: str = "") -> None:
        """`status` is one of `STATUSES`; also records who wrote it and when (the heartbeat)."""
        if self.is_writer:
            record = {
                "status": status,
                "step": int(step),
                "message": message,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "updated": time.time(),
            }
            _write_atomically(self.workdir / STATUS_FILE, json.dumps(record) + "\n")


def _write_atomically(path: epath.Path, text: str) -> None:
    """Readers see the old or the new file, never a torn one."""
    temporary = path.parent / f".{path.name}.tmp"
    temporary.write_text(text)
    temporary.replace(path)


def _is_remote(workdir: str | epath.PathLike) -> bool:
    return "://" in str(workdir)


def check_workdir(workdir: str | epath.PathLike) -> None:
    """One-line errors for a workdir no run can use: a file, or a directory (or the nearest
    existing parent of one to create) that this user cannot write. Creates nothing."""
    path = epath.Path(workdir)
    if _is_remote(workdir):
        return  # Bucket permissions show at the first write, with the bucket's own message.
    if path.exists() and not path.is_dir():
        raise ValueError(f"workdir {workdir} is a file, not a directory; choose another --workdir")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"workdir {workdir}: {existing} is a file; choose another --workdir")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "workdir" if existing == path else f"workdir {workdir}: parent"
        raise ValueError(f"{what} {existing} is not writable by this user")


class WorkdirBusyError(ValueError):
    """Another run holds the workdir's lock."""


@contextlib.contextmanager
def workdir_lock(workdir: str | epath.PathLike) -> Iterator[None]:
    """Holds `WORKDIR/run.lock` for one run, so a second run on the workdir refuses to start.

    An flock(2) lock: the kernel releases it when the holder exits, however it exits (SIGKILL
    included), so a stale lock file never blocks a new run. The file records the holder (pid,
    host, start time) for the refusal message. Process 0 of a multi-host run locks for all and
    tells the others whether it could. On a remote (gs://) workdir there is no file lock: a
    second run is refused while a first one's status is "running" and fresh (`STALE_SECONDS`).
    """
    handle, refusal = None, ""
    if jax.process_index() == 0:
        try:
            handle = _acquire(workdir)
        except WorkdirBusyError as error:
            refusal = str(error)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        refused = multihost_utils.broadcast_one_to_all(np.int32(bool(refusal)))
        if refused and not refusal:
            refusal = f"workdir {workdir} is in use by another run (process 0 could not lock it)"
    if refusal:
        raise WorkdirBusyError(refusal)
    try:
        yield
    finally:
        if handle is not None:
            handle.close()  # releases the lock


def _acquire(workdir: str | epath.PathLike):
    """The open, flock-ed lock file (None for remote workdirs); WorkdirBusyError if taken."""
    if _is_remote(workdir):
        state = run_state(workdir)
        if state.get("status") == "running":
            raise WorkdirBusyError(
                f"workdir {workdir} is in use by a live run (pid {state.get('pid')} on "
                f"{state.get('host')}, status updated {_age(state)} ago); wait for it or "
                "choose another --workdir"
            )
        return None
    handle = open(epath.Path(workdir) / LOCK_FILE, "a+")  # noqa: SIM115  (held by the caller)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _holder(handle.read())
        handle.close()
        raise WorkdirBusyError(
            f"workdir {workdir} is in use by another run ({holder}); wait for it to finish "
            "or choose another --workdir"
        ) from None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}))
    handle.flush()
    return handle


def _holder(text: str) -> str:
    try:
        record = json.loads(text)
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "holder unknown"


def _age(status: dict[str, Any]) -> str:
    return f"{time.time() - float(status.get('updated', 0.0)):.0f} s"


def is_locked(workdir: str | epath.PathLike) -> bool:
    """Whether a live process holds the workdir's lock (local workdirs)."""
    path = epath.Path(workdir) / LOCK_FILE
    if not path.exists():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def run_state(workdir: str | epath.PathLike) -> dict[str, Any]:
    """`status.json`, with a "running" status that no live process backs reported as "dead".

    Local workdirs: dead when nobody holds the lock. Remote ones: dead when the status was not
    updated for `STALE_SECONDS`. Status files written before the heartbeat existed (no
    `updated`) count as live. {} when the run has not started.
    """
    status = read_status(workdir)
    if status.get("status") != "running":
        return status
    if _is_remote(workdir):
        alive = "updated" not in status or time.time() - status["updated"] < STALE_SECONDS
    else:
        alive = is_locked(workdir) or "pid" not in status
    if alive:
        return status
    return {**status, "status": "dead", "message": "the run ended without a final status"}


# Fields a resumed run may change: where the data and outputs live, how often to log, evaluate
# and save, and how long to train. Everything else (model, optimiser, data, seed, batch) shapes
# the run and must match the checkpoints, unless `train.allow_config_change` names it.
RESUME_SAFE_FIELDS = (
    "data.data_dir",
    "data.download",
    "eval.",
    "train.allow_config_change",
    "train.checkpoint_every_steps",
    "train.eval_batch_size",
    "train.eval_every_epochs",
    "train.keep_checkpoints",
    "train.keep_every_epoch",
    "train.log_every_steps",
    "train.num_epochs",
    "train.num_steps",
    "train.profile_steps",
    "train.restore_step",
)


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"width": 0.5}} -> {"model.width": 0.5} (lists read back as tuples)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= flat_config(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = lists_to_tuples(value)
    return flat


def config_drift(saved: dict[str, Any], new: dict[str, Any], allowed: str = "") -> list[str]:
    """`field: old -> new` for each field that differs between a run's saved config.json and
    the config it is resumed with, except `RESUME_SAFE_FIELDS` and the comma-separated
    `allowed` ones. Fields that only one side has (a config of an older version) are skipped."""
    exempt = RESUME_SAFE_FIELDS + tuple(f for f in allowed.replace(" ", "").split(",") if f)
    old, current = flat_config(saved), flat_config(new)
    return [
        f"{key}: {old[key]!r} -> {current[key]!r}"
        for key in sorted(old.keys() & current.keys())
        if old[key] != current[key]
        and not any(key == e or (e.endswith(".") and key.startswith(e)) for e in exempt)
    ]


def _read_json(path: epath.Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def lists_to_tuples(value: Any) -> Any:
    """JSON has no tuples: turn lists back into the tuples the configs use."""
    if isinstance(value, list | tuple):
        return tuple(lists_to_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: lists_to_tuples(v) for k, v in value.items()}
    return value


def require_run_dir(workdir: str | epath.PathLike) -> epath.Path:
    """The workdir as a path; FileNotFoundError when it is missing or has no config.json."""
    path = epath.Path(workdir)
    if not path.is_dir():
        raise FileNotFoundError(f"{workdir}: no such run directory")
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(
            f"{workdir} is not a run directory (no {CONFIG_FILE}; training writes it at start)"
        )
    return path


def read_mean(workdir: str | epath.PathLike) -> np.ndarray | None:
    """The saved mean image (float32, 0..255 units), or None when the run has none saved."""
    path = epath.Path(workdir) / MEAN_FILE
    return np.load(io.BytesIO(path.read_bytes())) if path.exists() else None


def read_class_names(workdir: str | epath.PathLike) -> tuple[str, ...]:
    """The saved class names; () for a run saved before they were written."""
    path = epath.Path(workdir) / CLASS_NAMES_FILE
    return tuple(json.loads(path.read_text())) if path.exists() else ()


def read_config(workdir: str | epath.PathLike) -> dict[str, Any]:
    """The run's config (`config.json`) as nested dicts; {} if not written yet."""
    return _read_json(epath.Path(workdir) / CONFIG_FILE)


def load_config(workdir: str | epath.PathLike) -> ml_collections.ConfigDict:
    """The run's config from `WORKDIR/config.json` (lists read back as tuples), locked."""
    path = require_run_dir(workdir) / CONFIG_FILE
    config = ml_collections.ConfigDict(lists_to_tuples(json.loads(path.read_text())))
    config.lock()
    return config


def read_status(workdir: str | epath.PathLike) -> dict[str, Any]:
    """`status.json`: {"status": "running"|"done"|"preempted"|"diverged", "step", "message"};
    {} when the run has not started."""
    return _read_json(epath.Path(workdir) / STATUS_FILE)


def _restarts(records: list[dict[str, Any]], record: dict[str, Any]) -> bool:
    """Whether `record` is logged again by a resumed run: its step goes backwards, or a record
    at the same step already has one of its metrics (a train line followed by an eval line at
    the same step is not a restart)."""
    step = record.get("step")
    if step is None or not records:
        return False
    if step < records[-1].get("step", -1):
        return True
    keys = set(record) - {"step", "epoch"}
    for earlier in reversed(records):
        if earlier.get("step") != step:
            return False
        if keys & set(earlier):
            return True
    return False


def read_metrics(workdir: str | epath.PathLike) -> list[dict[str, Any]]:
    """Records of `metrics.jsonl` in step order, as one uninterrupted history.

    A resumed run restarts from its last checkpoint and logs those steps again: the records of
    the abandoned stretch (step >= the restart step) are dropped. A torn last line (the job
    killed mid-write) is skipped.
    """
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if _restarts(records, record):
            records = [r for r in records if r.get("step", -1) < record["step"]]
        records.append(record)
    return records


def final_eval(workdir: str | epath.PathLike) -> dict[str, Any]:
    """The last evaluation record (`step`, `epoch` and the `eval/...` keys); {} if none yet."""
    for record in reversed(read_metrics(workdir)):
        if "eval/top1_error" in record:
            keep = {k: v for k, v in record.items() if k.startswith("eval/")}
            return {"step": record.get("step"), "epoch": record.get("epoch"), **keep}
    return {}
