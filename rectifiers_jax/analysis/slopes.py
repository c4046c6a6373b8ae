"""Learned PReLU slopes `a` per layer, from a run's checkpoint, beside the paper's Table 1.

    python -m rectifiers_jax.analysis.slopes runs/default [--step N]

Prints mean, min and max of each activated layer's `a` (one value per layer channel-shared, one
per channel channel-wise), with Table 1's channel-shared and channel-wise means when the model is
net14, says whether every `a` stays in (0, 1), and writes WORKDIR/slopes.csv. Also home of
`load_run`, the checkpoint loader the other analysis modules and the notebook share.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from rectifiers_jax import checkpoints, cli, models
from rectifiers_jax.analysis import paper, report, runs

CSV_NAME = "slopes.csv"


@dataclasses.dataclass(frozen=True)
class Run:
    """A run loaded from its workdir: config, model, parameters of checkpoint `step`."""

    workdir: str
    config: ml_collections.ConfigDict
    model: models.SPPNet
    params: dict[str, Any]
    step: int


def load_run(workdir: str | epath.PathLike, step: int | None = None) -> Run:
    """Config, model and parameters of checkpoint `step` (None: the latest).

    Raises FileNotFoundError (one line) for a missing workdir, a run without checkpoints or a
    step that was not kept.
    """
    report.require_run_dir(workdir)
    steps = ocp.utils.checkpoint_steps(checkpoints.checkpoint_dir(workdir))
    if not steps:
        status = runs.read_status(workdir)
        state = f"{status['status']} at step {status['step']}" if status else "not started"
        raise FileNotFoundError(f"{workdir} has no checkpoints yet (status: {state})")
    if step is None:
        step = max(steps)
    elif step not in steps:
        raise FileNotFoundError(
            f"{workdir} has no checkpoint at step {step} (kept: {sorted(steps)})"
        )
    model, variables = checkpoints.load_model(workdir, step)
    return Run(str(workdir), checkpoints.load_config(workdir), model, variables["params"], step)


@dataclasses.dataclass(frozen=True)
class SlopeStats:
    """One layer's learned `a`: channel-shared (one value) or channel-wise (one per channel)."""

    layer: str
    shared: bool
    count: int
    mean: float
    min: float
    max: float


def slope_stats(params: Mapping[str, Any], layers: Sequence[str]) -> list[SlopeStats]:
    """Statistics of `params[layer]["act"]["a"]` for each of `layers` that has one, in order."""
    stats = []
    for layer in layers:
        a = params.get(layer, {}).get("act", {}).get("a")
        if a is None:
            continue
        a = np.asarray(a, np.float64)
        stats.append(
            SlopeStats(layer, a.ndim == 0, a.size, float(a.mean()), float(a.min()), float(a.max()))
        )
    return stats


def outside_unit_interval(stats: Sequence[SlopeStats]) -> list[str]:
    """Layers with some `a` <= 0 or >= 1, e.g. ["conv1 (max 1.021)"]; [] when all are in (0, 1)."""
    found = []
    for s in stats:
        ends = [f"min {s.min:.3f}"] * (s.min <= 0) + [f"max {s.max:.3f}"] * (s.max >= 1)
        if ends:
            found.append(f"{s.layer} ({', '.join(ends)})")
    return found


def table_rows(stats: Sequence[SlopeStats], model_name: str) -> list[dict[str, Any]]:
    """Rows of the printed table and of slopes.csv (Table 1's columns for net14 only)."""
    rows = []
    for s in stats:
        row = {
            "layer": s.layer,
            "a": "shared" if s.shared else "channel-wise",
            "count": s.count,
            "mean": s.mean,
            "min": s.min,
            "max": s.max,
        }
        if model_name == paper.TABLE1_MODEL:
            row["paper shared"] = paper.table1_slope(s.layer, "prelu_shared")
            row["paper channel-wise"] = paper.table1_slope(s.layer, "prelu")
        rows.append(row)
    return rows


def run_slopes(run: Run) -> list[SlopeStats]:
    """Slope statistics of a loaded run, in depth order; ValueError if it learned none."""
    require_prelu(run.workdir, run.config.model.activation)
    return slope_stats(run.params, models.activated_layers(run.model))


def heading(run: Run) -> str:
    """First line of the CLI's output: the run, its PReLU kind and the checkpoint step."""
    name, activation = run.config.model.name, run.config.model.activation
    kind = "channel-shared" if activation == "prelu_shared" else "channel-wise"
    line = f"{run.workdir}: {name} {activation} ({kind}), checkpoint step {run.step}"
    if name == paper.TABLE1_MODEL:
        line += f"; compare 'mean' with the paper's {kind} column (Table 1)"
    return line


def format_slopes(stats: Sequence[SlopeStats], model_name: str) -> str:
    """The table (Table 1's layout) and whether every `a` stays in (0, 1)."""
    outside = outside_unit_interval(stats)
    verdict = "all slopes in (0, 1): " + ("yes" if not outside else "no: " + "; ".join(outside))
    return report.text_table(table_rows(stats, model_name)) + "\n" + verdict


def require_prelu(workdir: str | epath.PathLike, activation: str | None) -> None:
    """ValueError (one line) when the run's activation learns no slopes."""
    if activation not in paper.PRELU_ACTIVATIONS:
        raise ValueError(f"{workdir} has no learned slopes (activation {activation})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rectifiers_jax.analysis.slopes", description=__doc__.splitlines()[0]
    )
    parser.add_argument("workdir", help="run directory with config.json and checkpoints/")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    args = parser.parse_args(argv)
    report.quiet_logs()
    try:
        report.require_run_dir(args.workdir)
        require_prelu(args.workdir, runs.read_config(args.workdir)["model"].get("activation"))
        run = load_run(args.workdir, args.step)
        stats = run_slopes(run)
        csv_path = epath.Path(args.workdir) / CSV_NAME
        report.write_csv(table_rows(stats, run.config.model.name), csv_path)
    except (OSError, ValueError, checkpoints.CheckpointError) as error:
        return cli.fail(error)
    print(heading(run))
    print(format_slopes(stats, run.config.model.name))
    print(f"wrote {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
