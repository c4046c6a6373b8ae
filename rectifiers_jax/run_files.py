"""The workdir contract: every file a run writes beside its checkpoints, and every reader of them.

    WORKDIR/config.json       the config as run (`RunWriter.write_config`, `load_config`)
    WORKDIR/metrics.jsonl     one JSON object per logged step (`append_metrics`, `read_metrics`)
    WORKDIR/status.json       {"status", "step", "message"} (`write_status`, `read_status`)
    WORKDIR/eval_<protocol>.json   `python -m rectifiers_jax.evaluate` (`eval_path`)
    WORKDIR/checkpoints/      orbax, see `rectifiers_jax.checkpoints`

Keys of metrics.jsonl: `step` (int), `epoch` (float), `train/loss`, `train/top1_error`
(percent), `learning_rate`, `steps_per_sec`, `slope/<layer>` (mean PReLU `a`), `dead/<layer>`
(fraction of units never positive over the logged batch); evaluations add `eval/loss`,
`eval/top1_error`, `eval/top5_error` (percent) and `eval/num_examples`.

Paths may be local or `gs://` (etils.epath). Readers of optional files return empty values
when the file is missing, so a sweep can list trials that never started.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
from etils import epath

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
CHECKPOINT_DIR = "checkpoints"
STATUSES = ("running", "done", "preempted", "diverged")


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

    def write_status(self, status: str, step: int, message: str = "") -> None:
        """`status` is one of `STATUSES`."""
        if self.is_writer:
            record = {"status": status, "step": int(step), "message": message}
            (self.workdir / STATUS_FILE).write_text(json.dumps(record) + "\n")


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
