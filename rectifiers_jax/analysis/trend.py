"""Did a short run learn? Training-loss windows and an exact binomial test of its last evaluation.

    python -m rectifiers_jax.analysis.trend RUN [RUN ...] [--window=10] [--alpha=0.001] \
        [--markdown] [--json=OUT]

For checks such as "the full-width model trains for 100 steps" (README, "Full width"), where a
batch of 8 makes single-step losses too noisy to read by eye. Per run: status and step
(`status.json`), the mean training loss over the first and the last `--window` logged steps,
every evaluation's top-1 error and loss, and a verdict by this rule:

    learns     status done; at least two windows of logged steps, the last window's mean loss
               below the first window's; and the last evaluation's correct count k of n above
               chance, one-sided exact binomial P(X >= k | n, 1/C) < alpha (C classes, from
               the run's config)
    diverged   status diverged (the loop stopped on a non-finite loss)
    no signal  anything else: finished but not measurably better than chance, or unfinished

With 200 evaluation examples and 10 classes, alpha = 0.001 needs top-1 error <= 82.5%.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from etils import epath

from rectifiers_jax import cli, run_files
from rectifiers_jax.analysis import tables

DEFAULT_WINDOW = 10
DEFAULT_ALPHA = 1e-3


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly (sum of the upper terms)."""
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must lie in [0, n={n}]")
    return min(1.0, sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def trend(
    workdir: str | epath.PathLike, window: int = DEFAULT_WINDOW, alpha: float = DEFAULT_ALPHA
) -> dict[str, Any]:
    """One row: run, model, activation, init, status, step, loss windows, the evaluations
    (`evals`: step, top-1 error %, loss, examples), the last one's binomial p-value and the
    verdict."""
    if window < 1:
        raise ValueError(f"--window={window} is not valid; use an integer >= 1")
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha={alpha} is not valid; use a number in (0, 1)")
    run_files.require_run_dir(workdir)
    config = run_files.read_config(workdir)
    classes = config.get("model", {}).get("num_classes")
    if not classes:
        raise ValueError(f"{workdir}/config.json names no model.num_classes")
    records = run_files.read_metrics(workdir)
    losses = [r["train/loss"] for r in records if r.get("train/loss") is not None]
    evals = [
        {
            "step": r["step"],
            "top1_error": r["eval/top1_error"],
            "loss": r.get("eval/loss"),
            "num_examples": int(r["eval/num_examples"]),
        }
        for r in records
        if r.get("eval/top1_error") is not None
    ]
    status = run_files.read_status(workdir)
    first, last = _mean(losses[:window]), _mean(losses[-window:])
    p_value = None
    if evals:
        n = evals[-1]["num_examples"]
        correct = round(n * (1 - evals[-1]["top1_error"] / 100))
        p_value = binomial_tail(correct, n, 1 / classes)
    if status.get("status") == "diverged":
        verdict = "diverged"
    elif (
        status.get("status") == "done"
        and len(losses) >= 2 * window
        and last < first
        and p_value is not None
        and p_value < alpha
    ):
        verdict = "learns"
    else:
        verdict = "no signal"
    model = config.get("model", {})
    return {
        "run": tables.run_label(workdir),
        "model": model.get("name"),
        "activation": model.get("activation"),
        "init": model.get("init"),
        "lr": config.get("optim", {}).get("learning_rate"),
        "batch": config.get("train", {}).get("global_batch_size"),
        "status": status.get("status"),
        "step": status.get("step"),
        "loss_first": first,
        "loss_last": last,
        "evals": evals,
        "chance_error": 100 * (1 - 1 / classes),
        "p_value": p_value,
        "verdict": verdict,
    }


def _display(row: dict[str, Any]) -> dict[str, Any]:
    """A row for the tables: evaluations as "step: error% (loss)", the p-value in e-notation."""
    shown = {k: v for k, v in row.items() if k not in ("evals", "p_value")}
    shown["evals"] = "; ".join(
        f"{e['step']}: {e['top1_error']:.1f}%"
        + (f" ({e['loss']:.2f})" if e["loss"] is not None else "")
        for e in row["evals"]
    )
    shown["p_value"] = None if row["p_value"] is None else f"{row['p_value']:.1e}"
    return shown


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog="python -m rectifiers_jax.analysis.trend", description=__doc__.splitlines()[0]
    )
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="default %(default)s")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="default %(default)s")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    rows = [trend(run, args.window, args.alpha) for run in args.runs]
    shown = [_display(row) for row in rows]
    print(tables.markdown_table(shown, ".4g") if args.markdown else tables.text_table(shown, ".4g"))
    if args.json:
        epath.Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return cli.EXIT_DONE


if __name__ == "__main__":
    cli.run(main, library_level=logging.ERROR)
