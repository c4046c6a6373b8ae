"""Learned PReLU slopes `a` per layer, from a run's checkpoint, beside the paper's Table 1.

    python -m rectifiers_jax.analysis.slopes runs/default [--step N]

Prints mean, min and max of each activated layer's `a` (one value per layer channel-shared, one
per channel channel-wise), with Table 1's channel-shared and channel-wise means when the model is
net14, says whether every `a` stays in (0, 1), and writes WORKDIR/slopes.csv.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from rectifiers_jax import checkpoints, cli, models, run_files
from rectifiers_jax.analysis import paper, tables

CSV_NAME = "slopes.csv"


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


def run_slopes(run: checkpoints.Run) -> list[SlopeStats]:
    """Slope statistics of a loaded run, in depth order; ValueError if it learned none."""
    require_prelu(run.workdir, run.config.model.activation)
    return slope_stats(run.params, models.activated_layers(run.model))


def heading(run: checkpoints.Run) -> str:
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
    return tables.text_table(table_rows(stats, model_name)) + "\n" + verdict


def require_prelu(workdir: str | epath.PathLike, activation: str | None) -> None:
    """ValueError (one line) when the run's activation learns no slopes."""
    if activation not in paper.PRELU_ACTIVATIONS:
        raise ValueError(f"{workdir} has no learned slopes (activation {activation})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.analysis.slopes", description=__doc__.splitlines()[0]
    )
    parser.add_argument("workdir", help="run directory with config.json and checkpoints/")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    args = parser.parse_args(argv)
    run_files.require_run_dir(args.workdir)
    require_prelu(args.workdir, run_files.read_config(args.workdir)["model"].get("activation"))
    run = checkpoints.load_run(args.workdir, args.step)
    stats = run_slopes(run)
    csv_path = epath.Path(args.workdir) / CSV_NAME
    tables.write_csv(table_rows(stats, run.config.model.name), csv_path)
    print(heading(run))
    print(format_slopes(stats, run.config.model.name))
    print(f"wrote {csv_path}")
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run(main, library_level=logging.ERROR)
