"""One table of a sweep's trials: overrides, final metrics and outcome; error against init scale.

    python -m rectifiers_jax.analysis.sweep_table runs/sweeps/init_variance
    python -m rectifiers_jax.analysis.sweep_table runs/sweeps/table2_cpu --replicate_key=seed

Reads SWEEP_DIR/sweep.json (written by `python -m launch.sweep`) and each trial's workdir; writes
SWEEP_DIR/sweep_table.md, sweep_table.csv and sweep_error_vs_scale.png, and prints the Markdown.

Outcome of a trial, first match wins:
  diverged  status.json says so;
  stalled   the last evaluation's top-1 error is within `--chance_margin` percentage points
            (default 5) of chance, 100 * (1 - 1/num_classes), after `--stall_epochs` epochs
            (default 5) or at the end of a finished run -- the paper's Xavier net30 (Fig. 3);
  done, running, preempted, failed  status.json (`run_files.run_state`);
  dead      status.json says running, but no live process backs it (killed without a status);
  missing   no status.json yet (never started).
num_classes comes from the trial's config.json (`model.num_classes`, else `data.num_classes`), else
a `num_classes` key in its metrics, else `--num_classes`; without it no trial is called stalled.

With `--replicate_key=seed`, trials that differ only in the seed are one arm: the arms' mean,
std and 95% interval go to sweep_arms.md/.csv, and the sweep's pre-registered claims, judged by
their rules (`analysis.replicates`), to sweep_claims.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

from etils import epath

from rectifiers_jax import cli, run_files
from rectifiers_jax.analysis import tables

DEFAULT_STALL_EPOCHS = 5.0
DEFAULT_CHANCE_MARGIN = 5.0
SCALE_KEY = "model.init_scale"
FLOAT_FORMAT = ".4g"
METRIC_COLUMNS = ("outcome", "epoch", "step", "top1_error", "top5_error", "train_loss")


@dataclasses.dataclass(frozen=True)
class TrialResult:
    """One trial: its axis values, final metrics (None where not logged yet) and outcome."""

    name: str
    overrides: dict[str, Any]
    outcome: str
    epoch: float | None
    step: int | None
    top1_error: float | None
    top5_error: float | None
    train_loss: float | None
    num_classes: int | None
    # (epoch, eval top-1 error %) of every evaluation, in order.
    evals: tuple[tuple[float, float], ...] = ()


def _num_classes(
    config: dict[str, Any], metrics: list[dict[str, Any]], default: int | None
) -> int | None:
    for section in ("model", "data"):
        value = config.get(section, {}).get("num_classes")
        if value:
            return int(value)
    for record in reversed(metrics):
        if record.get("num_classes"):
            return int(record["num_classes"])
    return default


def chance_error(num_classes: int) -> float:
    """Top-1 error (percent) of guessing uniformly among `num_classes`."""
    return 100.0 * (1.0 - 1.0 / num_classes)


def classify(
    status: str,
    last_eval: dict[str, Any],
    num_classes: int | None,
    *,
    stall_epochs: float = DEFAULT_STALL_EPOCHS,
    chance_margin: float = DEFAULT_CHANCE_MARGIN,
) -> str:
    """Outcome of a trial from its status.json status and last evaluation (module docstring)."""
    if status == "diverged":
        return "diverged"
    error, epoch = last_eval.get("eval/top1_error"), last_eval.get("epoch")
    if error is not None and num_classes:
        # A finished run cannot leave chance any more, however few epochs it had.
        long_enough = status == "done" or (epoch is not None and epoch >= stall_epochs)
        if long_enough and error >= chance_error(num_classes) - chance_margin:
            return "stalled"
    return status if status in ("done", "running", "preempted", "failed", "dead") else "missing"


def read_trial(
    workdir: str | epath.PathLike,
    name: str,
    overrides: dict[str, Any],
    *,
    stall_epochs: float = DEFAULT_STALL_EPOCHS,
    chance_margin: float = DEFAULT_CHANCE_MARGIN,
    num_classes: int | None = None,
) -> TrialResult:
    """Final metrics and outcome of the trial in `workdir`; `num_classes` is the fallback when
    neither its config nor its metrics say."""
    metrics = run_files.read_metrics(workdir)
    last_eval = run_files.final_eval(workdir)
    num_classes = _num_classes(run_files.read_config(workdir), metrics, num_classes)
    status = run_files.run_state(workdir).get("status", "missing")
    losses = [r["train/loss"] for r in metrics if "train/loss" in r]
    evals = tuple(
        (float(r["epoch"]), float(r["eval/top1_error"]))
        for r in metrics
        if "eval/top1_error" in r and "epoch" in r
    )
    return TrialResult(
        name=name,
        overrides=overrides,
        outcome=classify(
            status, last_eval, num_classes, stall_epochs=stall_epochs, chance_margin=chance_margin
        ),
        epoch=metrics[-1].get("epoch") if metrics else None,
        step=metrics[-1].get("step") if metrics else None,
        top1_error=last_eval.get("eval/top1_error"),
        top5_error=last_eval.get("eval/top5_error"),
        train_loss=losses[-1] if losses else None,
        num_classes=num_classes,
        evals=evals,
    )


def read_sweep(sweep_dir: str, **options: Any) -> tuple[dict[str, Any], list[TrialResult]]:
    """(sweep.json, one result per trial in sweep order); `options` go to `read_trial`.

    Raises ValueError naming the path when the folder or its sweep.json is missing.
    """
    root = epath.Path(sweep_dir)
    if not root.is_dir():
        raise ValueError(f"sweep directory {sweep_dir} does not exist")
    summary_path = root / "sweep.json"
    if not summary_path.exists():
        raise ValueError(f"{summary_path} not found (python -m launch.sweep writes it)")
    summary = json.loads(summary_path.read_text())
    results = [
        read_trial(root / trial["name"], trial["name"], trial["overrides"], **options)
        for trial in summary["trials"]
    ]
    return summary, results


def rows(summary: dict[str, Any], results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """Table rows: trial, one column per axis (its short label), then METRIC_COLUMNS."""
    labels = summary["labels"]
    return [
        {"trial": result.name}
        | {labels[key]: result.overrides.get(key) for key in summary["axes"]}
        | {column: getattr(result, column) for column in METRIC_COLUMNS}
        for result in results
    ]


def plot_error_vs_scale(
    summary: dict[str, Any],
    results: Sequence[TrialResult],
    path: epath.Path,
    scale_key: str = SCALE_KEY,
) -> bool:
    """PNG of final top-1 error against the init scale (log2 axis), one line per combination of
    the other axes; diverged trials as crosses at 100%. False (no plot) without a scale axis."""
    if scale_key not in summary["axes"]:
        return False
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    labels = summary["labels"]
    others = [key for key in summary["axes"] if key != scale_key]
    lines: dict[str, list[tuple[float, float, str]]] = {}
    for result in results:
        label = (
            ", ".join(
                f"{labels[k]}={tables.cell(result.overrides[k], FLOAT_FORMAT)}" for k in others
            )
            or "all"
        )
        if result.outcome == "diverged":
            lines.setdefault(label, []).append((result.overrides[scale_key], 100.0, "diverged"))
        elif result.top1_error is not None:
            lines.setdefault(label, []).append((result.overrides[scale_key], result.top1_error, ""))
    figure = Figure(figsize=(8, 5), layout="constrained")
    axis = figure.subplots()
    for label, points in lines.items():
        points.sort()
        drawn = axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        crosses = [p for p in points if p[2] == "diverged"]
        if crosses:
            colour = drawn[0].get_color()
            axis.scatter(
                [p[0] for p in crosses], [p[1] for p in crosses], marker="x", s=80, color=colour
            )
    classes = {r.num_classes for r in results if r.num_classes}
    if len(classes) == 1:
        axis.axhline(chance_error(classes.pop()), color="grey", linestyle="--", label="chance")
    axis.set_xscale("log", base=2)
    axis.set_xlabel(f"{labels[scale_key]} (variance multiplier, log2)")
    axis.set_ylabel("final top-1 error (%); x: diverged")
    axis.set_title(summary.get("sweep_config", ""))
    axis.grid(True, which="both", alpha=0.3)
    if lines:
        axis.legend(fontsize="small")
    with path.open("wb") as f:
        figure.savefig(f, format="png", dpi=120)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.analysis.sweep_table", description=__doc__.splitlines()[0]
    )
    parser.add_argument("sweep_dir", help="folder with sweep.json and one workdir per trial")
    parser.add_argument(
        "--stall_epochs",
        type=float,
        default=DEFAULT_STALL_EPOCHS,
        help="epochs after which an error near chance counts as stalled (default %(default)s)",
    )
    parser.add_argument(
        "--chance_margin",
        type=float,
        default=DEFAULT_CHANCE_MARGIN,
        help="percentage points from chance still counted as chance (default %(default)s)",
    )
    parser.add_argument(
        "--num_classes", type=int, help="class count for trials whose config and metrics omit it"
    )
    parser.add_argument(
        "--scale_key", default=SCALE_KEY, help="axis on the plot's x (default %(default)s)"
    )
    parser.add_argument(
        "--replicate_key", help="axis whose values are replicates (e.g. seed): arms and claims"
    )
    args = parser.parse_args(argv)
    summary, results = read_sweep(
        args.sweep_dir,
        stall_epochs=args.stall_epochs,
        chance_margin=args.chance_margin,
        num_classes=args.num_classes,
    )
    root = epath.Path(args.sweep_dir)
    table = rows(summary, results)
    markdown = tables.markdown_table(table, FLOAT_FORMAT, header=("trial", *METRIC_COLUMNS))
    (root / "sweep_table.md").write_text(markdown + "\n")
    (root / "sweep_table.csv").write_text(tables.csv_text(table, ("trial", *METRIC_COLUMNS)))
    print(markdown)
    outcomes = [result.outcome for result in results]
    print(", ".join(f"{outcomes.count(o)} {o}" for o in dict.fromkeys(outcomes)))
    plotted = plot_error_vs_scale(
        summary, results, root / "sweep_error_vs_scale.png", args.scale_key
    )
    written = ["sweep_table.md", "sweep_table.csv"] + (
        ["sweep_error_vs_scale.png"] if plotted else []
    )
    print(f"wrote {', '.join(written)} in {args.sweep_dir}")
    if not plotted:
        print(f"no {args.scale_key} axis in this sweep: no plot")
    if args.replicate_key:
        write_replicates(root, summary, results, args.replicate_key)
    return cli.EXIT_DONE


def write_replicates(
    root: epath.Path,
    summary: dict[str, Any],
    results: Sequence[TrialResult],
    replicate_key: str,
) -> None:
    """The arms table and the claims' verdicts (seeds as replicates), printed and written."""
    from rectifiers_jax.analysis import replicates  # scipy: only when replicates are asked for

    claims = summary.get("claims") or []
    arms = replicates.arms(summary, results, replicate_key)
    arm_rows = replicates.arm_rows(arms, claims)
    arms_md = tables.markdown_table(arm_rows)
    (root / "sweep_arms.md").write_text(arms_md + "\n")
    (root / "sweep_arms.csv").write_text(tables.csv_text(arm_rows))
    print(f"\narms ({replicate_key} as replicates; mean ± std [95% t-interval]):\n{arms_md}")
    verdicts = [replicates.judge(claim, arms) for claim in claims]
    claims_md = tables.markdown_table(verdicts, header=("claim", "verdict", "evidence"))
    (root / "sweep_claims.md").write_text(claims_md + "\n")
    print(f"\nclaims (rules fixed before the runs):\n{claims_md}")
    print(f"wrote sweep_arms.md, sweep_arms.csv, sweep_claims.md in {root}")


if __name__ == "__main__":
    cli.run(main, library_level=logging.ERROR)
