"""Error against epochs for several runs, train and eval, as in the paper's Figs. 2 and 3.

    python -m rectifiers_jax.analysis.curves runs/b_he runs/b_xavier --out fig2.png

Reads each run's metrics.jsonl (`run_files.read_metrics`: a resumed run's repeated steps are
dropped). `--metric eval/top1_error` (default) plots `train/top1_error` dashed and
`eval/top1_error` solid, one colour per run; any `train/X` or `eval/X` works. `--splits eval`
keeps one line per run (for many runs, e.g. a sweep's seeds). Writes the PNG and, beside it, a
CSV of every plotted point (run, split, step, epoch, metric, value).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from etils import epath

from rectifiers_jax import cli, run_files
from rectifiers_jax.analysis import tables

DEFAULT_METRIC = "eval/top1_error"
SPLITS = ("train", "eval")


def curve_points(
    workdir: str | epath.PathLike, metric: str, label: str, splits: Sequence[str] = SPLITS
) -> list[dict[str, Any]]:
    """Every logged point of `<split>/<name>` for each of `splits` (name = `metric` after its
    split)."""
    name = metric.split("/", 1)[-1]
    points = []
    for record in run_files.read_metrics(workdir):
        for split in splits:
            key = f"{split}/{name}"
            if record.get(key) is not None:
                points.append(
                    {
                        "run": label,
                        "split": split,
                        "step": record.get("step"),
                        "epoch": record.get("epoch"),
                        "metric": key,
                        "value": record[key],
                    }
                )
    return points


def collect(
    workdirs: Sequence[str | epath.PathLike], metric: str, splits: Sequence[str] = SPLITS
) -> list[dict[str, Any]]:
    """Points of every run (labels from `report.run_label`); one-line errors for bad runs."""
    bad = [split for split in splits if split not in SPLITS]
    if bad or not splits:
        raise ValueError(f"--splits {','.join(splits)!r}: each must be one of {', '.join(SPLITS)}")
    points = []
    for workdir in workdirs:
        run_files.require_run_dir(workdir)
        if not run_files.read_metrics(workdir):
            raise ValueError(f"{workdir} has no metrics.jsonl records yet")
        found = curve_points(workdir, metric, tables.run_label(workdir, workdirs), splits)
        if not found:
            raise ValueError(f"{workdir} logged no {metric} for splits {', '.join(splits)}")
        points += found
    return points


def _describe(workdir: str | epath.PathLike) -> str:
    model = run_files.read_config(workdir).get("model", {})
    return ", ".join(str(model[k]) for k in ("name", "activation", "init") if k in model)


def plot(
    points: Sequence[dict[str, Any]],
    path: str | epath.PathLike,
    metric: str = DEFAULT_METRIC,
    descriptions: dict[str, str] | None = None,
) -> None:
    """PNG of `points` (from `collect`): x epochs, one colour per run, train dashed, eval solid."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    figure = Figure(figsize=(8, 5), layout="constrained")
    axis = figure.subplots()
    colours: dict[str, Any] = {}
    for run in dict.fromkeys(p["run"] for p in points):
        for split in SPLITS:
            curve = [p for p in points if p["run"] == run and p["split"] == split]
            if not curve:
                continue
            extra = f" ({descriptions[run]})" if descriptions and descriptions.get(run) else ""
            (line,) = axis.plot(
                [p["epoch"] for p in curve],
                [p["value"] for p in curve],
                linestyle="--" if split == "train" else "-",
                marker="o" if split == "eval" and len(curve) < 30 else None,
                color=colours.get(run),
                label=f"{run}{extra} {split}",
            )
            colours.setdefault(run, line.get_color())
    name = metric.split("/", 1)[-1]
    axis.set_xlabel("epoch")
    axis.set_ylabel(name + (" (%)" if name.endswith("error") else ""))
    shown = [split for split in SPLITS if any(p["split"] == split for p in points)]
    styles = {"train": "train (dashed)", "eval": "eval (solid)"}
    axis.set_title(f"{name}: " + " and ".join(styles[split] for split in shown))
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small")
    with epath.Path(path).open("wb") as f:
        figure.savefig(f, format="png", dpi=120)


def write_curves(
    workdirs: Sequence[str | epath.PathLike],
    out: str | epath.PathLike,
    metric: str = DEFAULT_METRIC,
    splits: Sequence[str] = SPLITS,
) -> tuple[epath.Path, epath.Path]:
    """Collects, plots to `out` (PNG) and writes the CSV beside it; returns both paths."""
    points = collect(workdirs, metric, splits)
    png = epath.Path(out)
    csv_path = png.with_suffix(".csv")
    descriptions = {tables.run_label(w, workdirs): _describe(w) for w in workdirs}
    plot(points, png, metric, descriptions)
    tables.write_csv(points, csv_path)
    return png, csv_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.analysis.curves", description=__doc__.splitlines()[0]
    )
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--out", default="curves.png", help="PNG path (default %(default)s)")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help="default %(default)s")
    parser.add_argument(
        "--splits", default=",".join(SPLITS), help="comma-separated, default %(default)s"
    )
    args = parser.parse_args(argv)
    splits = [split for split in args.splits.split(",") if split]
    png, csv_path = write_curves(args.runs, args.out, args.metric, splits)
    print(f"wrote {png} and {csv_path}")
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run(main, library_level=logging.ERROR)
