"""Readers of a run's workdir (layout in docs/CONTRACTS.md), shared by every analysis module.

Paths may be local or `gs://` (etils.epath). Missing files read as empty rather than raising,
so a sweep can list trials that never started.
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath


def _read_json(path: epath.Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def read_config(workdir: str | epath.PathLike) -> dict[str, Any]:
    """The run's config (`config.json`) as nested dicts; {} if not written yet."""
    return _read_json(epath.Path(workdir) / "config.json")


def read_status(workdir: str | epath.PathLike) -> dict[str, Any]:
    """`status.json`: {"status": "running"|"done"|"preempted"|"diverged", "step", "message"};
    {} when the run has not started."""
    return _read_json(epath.Path(workdir) / "status.json")


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
    path = epath.Path(workdir) / "metrics.jsonl"
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
